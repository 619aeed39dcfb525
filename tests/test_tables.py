"""Tables 3/5/6 from finetuning results: matching, mean ± std over seeds, paper values."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from msgfm.errors import DataError
from msgfm.tables.aggregate import build_table, load_results, seed_values, write_tables
from msgfm.tables.compare import marker, paired_difference
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


def test_every_comparison_pairs_two_rows_we_run() -> None:
    for table in TABLES.values():
        inits = {row.label: row.init for row in table.rows}
        assert table.comparisons, table.name
        for comparison in table.comparisons:
            assert inits[comparison.row] and inits[comparison.baseline], comparison


def _t(differences: list[float]) -> float:
    """The paired t statistic, from its definition: mean / (sample std / √n)."""
    n = len(differences)
    return statistics.mean(differences) / (statistics.stdev(differences) / math.sqrt(n))


def test_paired_differences_are_tested_over_common_seeds_in_each_metrics_direction(
    tmp_path: Path,
) -> None:
    finetune = tmp_path / "finetune"
    msgfm = {  # seed -> metrics; random also ran seed 3 for BigEarthNet, unpaired
        0: {"ben": 85.0, "ben_full": 90.0, "MAE": 0.030, "SAM": 6.0},
        1: {"ben": 86.0, "ben_full": 91.0, "MAE": 0.032, "SAM": 6.2},
        2: {"ben": 88.0, "ben_full": 89.0},
    }
    random = {
        3: {"ben": 99.0, "ben_full": 99.0},
        2: {"ben": 81.0, "ben_full": 90.0},
        1: {"ben": 82.0, "ben_full": 89.0, "MAE": 0.051, "SAM": 5.1},
        0: {"ben": 80.0, "ben_full": 90.0, "MAE": 0.050, "SAM": 5.0},
    }
    paths = []
    for init, seeds in (("t3_msgfm", msgfm), ("random", random)):
        for seed, m in seeds.items():
            paths.append(put(finetune, "bigearthnet", init, 0.1, seed, mAP_micro=m["ben"]))
            paths.append(put(finetune, "bigearthnet", init, 1.0, seed, mAP_micro=m["ben_full"]))
            if "MAE" in m:
                paths.append(put(finetune, "sen12ms_cr", init, 1.0, seed, MAE=m["MAE"],
                                 SAM=m["SAM"], SSIM=0.5))  # fmt: skip
    paths.append(put(finetune, "vaihingen", "t3_msgfm", 1.0, 0, mIoU=40.0))
    paths += [put(finetune, "vaihingen", "random", 1.0, s, mIoU=35.0 + s) for s in (0, 1)]
    written = write_tables(paths, finetune, tmp_path / "tables", tables=["table3"])

    paired = pd.read_csv(tmp_path / "tables" / "table3_paired.csv")
    vs_random = paired[paired.comparison == "msGFM vs random"].set_index("column")
    # Two-sided p of Student's t: df = 2 -> 1 − t/√(t² + 2); df = 1 -> 1 − (2/π)·atan|t|.
    t = _t([5.0, 4.0, 7.0])  # 10 % BEN: seeds 0, 1, 2 paired; random's seed 3 left out
    ben = vs_random.loc["10% BEN mAP"]
    assert (ben.seeds, ben.verdict) == (3, "better")
    assert ben.difference == pytest.approx(16 / 3)
    assert ben.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2))  # 0.026
    t = _t([0.0, 2.0, -1.0])
    full = vs_random.loc["100% BEN mAP"]
    assert full.verdict == "tie" and full.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2))
    t = _t([-0.020, -0.019])  # MAE: lower is better, so a negative difference is a win
    mae = vs_random.loc["CR MAE"]
    assert (mae.seeds, mae.verdict) == (2, "better") and mae.difference < 0
    assert mae.p_value == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)))  # 0.016
    t = _t([1.0, 1.1])  # SAM: lower is better, so a positive difference is a loss
    sam = vs_random.loc["CR SAM"]
    assert sam.verdict == "worse" and sam.p_value == pytest.approx(1 - 2 / math.pi * math.atan(t))
    vai = vs_random.loc["Vai mIoU"]  # one common seed: a difference, no test
    assert (vai.seeds, vai.verdict, vai.difference) == (1, "no test", 5.0)
    assert math.isnan(vai.p_value)
    assert vs_random.loc["SN PSNR", "verdict"] == "not run"

    markdown = written["table3"].read_text()
    assert "Paired differences over seeds" in markdown and "paired t-test" in markdown
    line = next(x for x in markdown.splitlines() if x.startswith("| msGFM vs random"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    assert cells[0] == "+5.3 better (p=0.026, 3 seeds)"
    assert cells[1] == "tie: +0.3 (p=0.74, 3 seeds)"
    assert cells[2].endswith("better (p=0.016, 2 seeds)") and cells[2].startswith("-0.0")
    assert cells[3] == "+1.05 worse (p=0.03, 2 seeds)"
    assert cells[-1] == "+5.0 (1 seed: no test)"
    assert cells[5] == "–"


def test_equal_cells_are_a_tie_and_no_common_seed_is_not_run() -> None:
    seeds = pd.MultiIndex.from_tuples([(1.0, 0), (1.0, 1)], names=["fraction", "seed"])
    same = pd.Series([0.5, 0.7], index=seeds)
    equal = paired_difference(same, same.copy(), higher_is_better=True)
    assert (equal.verdict, equal.seeds, equal.difference) == ("tie", 2, 0.0)
    assert marker(equal, 2) == "tie: +0.00 (identical, 2 seeds)"
    other = pd.Series([0.5], index=pd.MultiIndex.from_tuples([(1.0, 5)], names=seeds.names))
    apart = paired_difference(same, other, higher_is_better=False)
    assert (apart.verdict, apart.seeds) == ("not run", 0) and marker(apart, 2) == "–"


def test_the_figure_shows_every_seed_behind_each_cell(tmp_path: Path) -> None:
    finetune = tmp_path / "finetune"
    paths = [
        put(finetune, "bigearthnet", "t3_msgfm", 0.1, seed, mAP_micro=84.0 + seed)
        for seed in range(3)
    ] + [put(finetune, "bigearthnet", "random", 0.1, 0, mAP_micro=80.0)]
    results = load_results(paths, finetune)
    seeds = seed_values(TABLE3, results, "stacked")
    assert sorted(seeds.itertuples(index=False, name=None)) == [
        ("Random", "10% BEN mAP", 0, 80.0),
        ("msGFM", "10% BEN mAP", 0, 84.0),
        ("msGFM", "10% BEN mAP", 1, 85.0),
        ("msGFM", "10% BEN mAP", 2, 86.0),
    ]
    write_tables(paths, finetune, tmp_path / "tables")
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "tables" / "table3.png")
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # drawn, not blank
    assert not list((tmp_path / "tables").glob(".*"))  # no temporary file left
