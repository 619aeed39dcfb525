"""Tables 3/5/6 from finetuning results: matching, mean ± std over seeds, paper values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from msgfm.errors import DataError
from msgfm.tables.aggregate import build_table, load_results, write_tables
from msgfm.tables.paper import TABLE3, TABLE6, TABLES


def put(root: Path, task: str, init: str, fraction: float, seed: int, **metrics: float) -> Path:
    path = root / task / init / "stacked" / f"frac{fraction}" / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path


def test_paper_tables_have_a_value_per_column() -> None:
    for table in TABLES.values():
        for row in table.rows:
            assert len(row.paper) == len(table.columns), (table.name, row.label)
    assert TABLE6.rows[-1].paper[1] == 87.5  # MoE + cross 50 %: 10 % BEN mAP
    assert TABLE3.rows[-1].init == "t3_msgfm" and TABLE3.rows[-1].paper[0] == 87.5


def test_cells_are_mean_and_std_over_seeds_beside_the_paper(tmp_path: Path) -> None:
    paths = [
        put(tmp_path, "bigearthnet", "t6_moe_cross50", 0.1, 0, mAP_micro=80.0, mAP_macro=50.0),
        put(tmp_path, "bigearthnet", "t6_moe_cross50", 0.1, 1, mAP_micro=84.0),
        put(tmp_path, "bigearthnet", "t6_moe_cross50", 0.01, 0, mAP_micro=70.0),
        put(tmp_path, "sen12ms_cr", "t6_moe_cross50", 1.0, 0, MAE=0.03, SAM=6.0, SSIM=0.8),
        put(tmp_path, "bigearthnet", "t6_dense_self", 0.1, 0, mAP_micro=75.0),
    ]
    results = load_results(paths, tmp_path)
    long = build_table(TABLE6, results, "stacked")
    best = long[long.row == "MoE ✓ cross ✓ 50%"].set_index("column")
    assert best.loc["10% BEN mAP", "ours_mean"] == pytest.approx(82.0)
    assert best.loc["10% BEN mAP", "ours_std"] == pytest.approx(math.sqrt(8.0))
    assert best.loc["10% BEN mAP", "seeds"] == 2
    assert best.loc["10% BEN mAP", "difference"] == pytest.approx(82.0 - 87.5)
    assert best.loc["1% BEN mAP", "ours_mean"] == pytest.approx(70.0)
    assert best.loc["CR SAM", "ours_mean"] == pytest.approx(6.0)
    assert best.loc["Vai mIoU", "seeds"] == 0 and math.isnan(best.loc["Vai mIoU", "ours_mean"])
    dense = long[long.row == "MoE ✗ cross ✗ 0%"].set_index("column")
    assert dense.loc["10% BEN mAP", "ours_mean"] == pytest.approx(75.0)


def test_written_tables_show_ours_paper_and_difference(tmp_path: Path) -> None:
    finetune = tmp_path / "finetune"
    paths = [
        put(finetune, "bigearthnet", "t3_msgfm", 0.1, 0, mAP_micro=85.0),
        put(finetune, "bigearthnet", "random", 0.1, 0, mAP_micro=80.0),
    ]
    written = write_tables(paths, finetune, tmp_path / "tables")
    markdown = written["table3"].read_text()
    assert "85.0 (87.5, -2.5)" in markdown  # ours (paper, difference)
    assert "80.0 (82.6, -2.6)" in markdown
    assert "| SeCo " in markdown and "82.6" in markdown  # literature rows are printed as reference
    csv = pd.read_csv(tmp_path / "tables" / "table3.csv")
    assert set(csv.table) == {"table3"}
    assert len(csv) == len(TABLE3.rows) * len(TABLE3.columns) + 1  # + the cost total line
    latex = (tmp_path / "tables" / "table3.tex").read_text()
    assert r"\begin{tabular}" in latex and "87.5" in latex
    for name in ("table5", "table6"):
        assert (tmp_path / "tables" / f"{name}.md").is_file()


def test_a_result_outside_the_layout_or_corrupt_is_named(tmp_path: Path) -> None:
    stray = tmp_path / "bigearthnet" / "metrics.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    with pytest.raises(DataError, match="not a finetuning result path"):
        load_results([stray], tmp_path)
    broken = put(tmp_path, "vaihingen", "random", 1.0, 0, mIoU=1.0)
    broken.write_text("{not json")
    with pytest.raises(DataError, match="corrupt metrics JSON") as info:
        load_results([broken], tmp_path)
    assert info.value.path == broken


def test_cost_columns_sum_each_job_once_and_keep_pretraining_apart(tmp_path: Path) -> None:
    finetune, pretrain = tmp_path / "finetune", tmp_path / "pretrain"
    paths = [
        put(finetune, "bigearthnet", "t6_moe_cross50", 0.1, 0, mAP_micro=80.0, device_hours=1.0),
        put(finetune, "bigearthnet", "t6_moe_cross50", 0.1, 1, mAP_micro=84.0, device_hours=2.0),
        put(finetune, "bigearthnet", "t6_moe_cross50", 0.01, 0, mAP_micro=70.0, device_hours=0.5),
        # One job fills three columns (CR MAE, SAM, SSIM): its cost counts once in the row.
        put(finetune, "sen12ms_cr", "t6_moe_cross50", 1.0, 0, MAE=0.03, SAM=6.0, SSIM=0.8,
            device_hours=4.0),
        put(finetune, "bigearthnet", "t6_dense_self", 0.1, 0, mAP_micro=75.0, device_hours=8.0),
    ]  # fmt: skip
    for variant, spent in (("t6_moe_cross50", 10.0), ("t6_dense_self", 20.0)):
        (pretrain / variant).mkdir(parents=True)
        (pretrain / variant / "metrics.json").write_text(json.dumps({"device_hours": spent}))
    write_tables(paths, finetune, tmp_path / "tables", pretrain_root=pretrain)
    csv = pd.read_csv(tmp_path / "tables" / "table6.csv")
    best = csv[csv.row == "MoE ✓ cross ✓ 50%"].set_index("column")
    assert best.loc["10% BEN mAP", "finetune_device_hours"] == pytest.approx(3.0)  # two seeds
    assert best.loc["CR SAM", "finetune_device_hours"] == pytest.approx(4.0)
    assert math.isnan(best.loc["Vai mIoU", "finetune_device_hours"])  # not run: no cost
    assert (best.pretrain_device_hours == 10.0).all()
    total = csv[csv.row == "Total"].iloc[0]
    assert total.finetune_device_hours == pytest.approx(1 + 2 + 0.5 + 4 + 8)
    assert total.pretrain_device_hours == pytest.approx(30.0)
    markdown = (tmp_path / "tables" / "table6.md").read_text()
    assert "finetune device-h" in markdown and "pretrain device-h" in markdown
    cells = {
        line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ")
    }
    assert cells["MoE ✓ cross ✓ 50%"][-2:] == ["7.5", "10"]  # 1 + 2 + 0.5 + 4; pretraining apart
    assert cells["Total"][-2:] == ["15.5", "30"]
    # Table 5 reuses Table 6's best variant ("from scratch"): its cost is in Table 5's total too.
    table5 = pd.read_csv(tmp_path / "tables" / "table5.csv")
    assert table5[table5.row == "Total"].iloc[0].pretrain_device_hours == pytest.approx(10.0)
    latex = (tmp_path / "tables" / "table6.tex").read_text()
    assert "pretrain device-h" in latex and "Total" in latex
