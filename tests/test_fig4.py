"""Paper Fig. 4: single-sensor pretraining variants, cells fed a subset of the sensors, the
figure, and their place in the DAG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from demo_jobs import finetune_job, pretrain_job

import msgfm.finetune.loop as finetune_loop
from msgfm.data.loader import MultiSourceDataset
from msgfm.data.shards import ShardSet
from msgfm.errors import DataError
from msgfm.finetune.data import task_spec, with_sensors
from msgfm.pretrain.loop import model_config, open_sources, run_pretraining, source_specs
from msgfm.tables.fig4 import parse_rows, sensors_label, write_fig4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(pretrain_shards: Path, downstream_shards: Path, tmp_path_factory) -> Path:
    """The demo's shard sets, as results/shards holds them."""
    root = tmp_path_factory.mktemp("fig4-shards")
    (root / "pretrain").symlink_to(pretrain_shards)
    (root / "downstream").symlink_to(downstream_shards)
    return root


def sar_only_job(shards: Path, results: Path) -> dict:
    """The demo's SAR-only Fig. 4 variant (SEN12MS's SAR), one epoch of two steps."""
    return pretrain_job(shards / "pretrain", results, "fig4_sar", epochs=1, max_steps_per_epoch=2)


def test_a_variant_reads_only_its_sources_and_sensors(shards, tmp_path):
    job = sar_only_job(shards, tmp_path)
    settings, sar_only = job["pretrain"], job["variant"]
    specs = source_specs(settings, sar_only)
    assert [s.name for s in specs] == ["sen12ms"]
    sets, sensors = open_sources(specs, shards / "pretrain", sar_only["sensors"])
    assert sensors == {"sen12ms": ["sar"]}
    dataset = MultiSourceDataset(sets, seed=0, roles=sensors)
    _, sample = dataset[("sen12ms", 0, 0)]
    assert set(sample) == {"sar", "row"}  # the S2 of the same rows is never read
    with pytest.raises(ValueError, match=r"variants\.fig4_sar\.sources: \['sen1'\]"):
        source_specs(settings, {**sar_only, "sources": ["sen1"]})
    with pytest.raises(ValueError, match=r"source 'rgb'.*none of the variant's"):
        open_sources(source_specs(settings), shards / "pretrain", ["sar"])
    with pytest.raises(ValueError, match=r"\['dsm'\] are in none of the sources"):
        open_sources(specs, shards / "pretrain", ["sar", "dsm"])
    everything = source_specs(settings, {"name": "all"})
    assert [s.name for s in everything] == ["rgb", "sen12ms", "mdas"]  # the demo's, in order


def test_a_sar_only_job_trains_the_sar_stem_and_leaves_the_others_at_init(shards, tmp_path):
    cfg = sar_only_job(shards, tmp_path)
    metrics = run_pretraining(cfg, tmp_path / "run")
    assert metrics["steps"] == 2
    assert not any("rgb" in key or "s2" in key for key in metrics if "/" in key)
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert figures == ["sen12ms_sar.png"]  # one sensor: no partner, no cross figure

    from msgfm.model.factory import build_model

    torch.manual_seed(0)  # what the job does before building its model
    initial = build_model(model_config(cfg)).state_dict()
    trained = torch.load(tmp_path / "run" / "encoder.pt", weights_only=True)["model"]
    for sensor in ("s2", "rgb", "dsm"):
        for key in (k for k in initial if k.startswith(f"embeds.{sensor}.")):
            assert torch.equal(trained[key], initial[key]), key
    assert not torch.equal(trained["embeds.sar.proj.weight"], initial["embeds.sar.proj.weight"])


def test_a_cell_fed_one_sensor_uses_only_its_stem_and_records_it(shards, tmp_path):
    spec = with_sensors(task_spec("sen12ms_cr"), ["s2"])
    assert spec.inputs == (("s2_cloudy", "s2"),) and spec.target == "s2"
    assert with_sensors(task_spec("bigearthnet"), None) == task_spec("bigearthnet")
    with pytest.raises(ValueError, match=r"sen12ms_cr cannot be fed \['dsm'\]: its sensors are"):
        with_sensors(task_spec("sen12ms_cr"), ["dsm"])
    config = finetune_job(
        shards / "downstream", tmp_path, "sen12ms_cr", sensors="sar", epochs=1, warmup_epochs=0,
        max_steps_per_epoch=1,
    )  # fmt: skip
    metrics = finetune_loop.run_finetuning(config, tmp_path / "cell")
    assert metrics["sensors"] == "sar" and metrics["SAM"] > 0
    shardset = ShardSet(config["shards"])
    model = finetune_loop.build_cell_model(
        config, with_sensors(task_spec("sen12ms_cr"), ["sar"]), shardset, shardset.split("train")
    )
    assert list(model.backbone.stacked.sensors) == ["sar"]


def cell(root: Path, name: str, **metrics: object) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return path


def test_the_figure_summarises_seeds_per_row_and_input_beside_the_paper(tmp_path):
    rows = ["fig4_sar=SAR only", "t6_moe_cross50=msGFM"]
    paths = []
    for i, (init, sensors, seed, value, sam) in enumerate(
        [
            ("fig4_sar", "sar", 0, 70.0, 12.0), ("fig4_sar", "sar", 1, 72.0, 14.0),
            ("t6_moe_cross50", "s2", 0, 86.0, 9.0), ("t6_moe_cross50", "s2", 1, 88.0, 11.0),
            ("t6_moe_cross50", "s2+sar", 0, 89.0, 8.0), ("random", "s2", 0, 50.0, 20.0),
        ]
    ):  # fmt: skip
        common = {"init": init, "sensors": sensors, "seed": seed}
        paths.append(cell(tmp_path, f"ben{i}", task="bigearthnet", fraction=0.1,
                          mAP_micro=value, **common))  # fmt: skip
        paths.append(cell(tmp_path, f"cr{i}", task="sen12ms_cr", fraction=0.01, SAM=sam,
                          **common))  # fmt: skip
    paths.append(cell(tmp_path, "ben_full", task="bigearthnet", fraction=1.0, mAP_micro=99.0,
                      init="fig4_sar", sensors="sar", seed=0))  # fmt: skip
    png, csv = tmp_path / "out" / "fig4.png", tmp_path / "out" / "fig4.csv"
    summary = write_fig4(paths, rows, png, csv)

    assert png.stat().st_size > 10_000
    assert pd.read_csv(csv).shape == summary.shape
    line = summary.set_index(["task", "pretraining", "sensors"])
    assert list(dict.fromkeys(summary.sensors)) == ["SAR", "S2", "SAR+S2"]
    sar = line.loc[("bigearthnet", "SAR only", "SAR")]
    assert (sar.ours_mean, sar.seeds) == (71.0, 2)  # the 100 % cell is not Fig. 4's
    assert sar.ours_std == pytest.approx(2**0.5)
    s2 = line.loc[("bigearthnet", "msGFM", "S2")]
    assert (s2.paper, s2.difference) == (86.8, pytest.approx(87.0 - 86.8))
    cr = line.loc[("sen12ms_cr", "msGFM", "SAR+S2")]
    assert (cr.metric, cr.ours_mean, cr.seeds) == ("SAM", 8.0, 1) and pd.isna(cr.ours_std)
    missing = line.loc[("sen12ms_cr", "SAR only", "S2")]
    assert missing.seeds == 0 and pd.isna(missing.ours_mean)
    assert "random" not in set(summary.init)  # not a row of the figure


def test_figure_sensors_must_be_recorded_and_rows_well_formed(tmp_path):
    old = cell(tmp_path, "old", task="bigearthnet", fraction=0.1, init="x", seed=0, mAP_micro=1.0)
    with pytest.raises(DataError, match=r"old/metrics\.json: needs 'sensors'"):
        write_fig4([old], ["x=X only"], tmp_path / "f.png", tmp_path / "f.csv")
    with pytest.raises(ValueError, match="expected INIT=LABEL"):
        parse_rows(["fig4_sar"])
    assert sensors_label("s2+sar") == sensors_label("sar+s2") == "SAR+S2"


def dry_run_jobs(tmp_path: Path, *targets: str, **config: object) -> dict[str, int]:
    """Job counts per rule of a dry run of the demo config into an empty results root."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(json.dumps({"results_root": str(tmp_path / "r"),
                                 "data_root": str(tmp_path / "d"), **config}))  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile",
         "config/demo.yaml", str(extra), "--", *targets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stats = result.stdout.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)}


def test_the_demo_dag_builds_fig4_only_when_it_is_on(tmp_path):
    off = dry_run_jobs(tmp_path)
    assert "fig4" not in off and "finetune_sensor_subset" not in off
    on = dry_run_jobs(tmp_path, figures={"fig4": True})
    assert on["fig4"] == 1
    assert on["pretrain"] == off["pretrain"] + 2  # fig4_sar, fig4_s2
    # 3 inits x 2 tasks x 2 single-sensor subsets x 3 seeds (config.yaml's finetune.seeds)
    assert on["finetune_sensor_subset"] == 36
    # a single-sensor variant waits for the SEN12MS shards only
    alone = dry_run_jobs(tmp_path, str(tmp_path / "r/pretrain/fig4_sar/encoder.pt"))
    assert (alone["tile_pretrain"], alone["pretrain"]) == (1, 1)


def test_a_restricted_variant_costs_only_its_sources_and_sensor_subsets_multiply_cells():
    from msgfm.cost import estimate

    config = {
        "pretrain": {
            "nodes": 1, "gpus_per_node": 1, "epochs_cap": None, "max_steps_per_epoch": None,
            "sources": {
                "rgb": {"datasets": ["geopile"], "batch_size": 10, "lr": 1e-4},
                "sen12ms": {"datasets": ["sen12ms"], "batch_size": 5, "lr": 1e-5},
            },
        },
        "variants": {
            "multi": {"table": "6", "epochs": 1},
            "fig4_sar": {"table": "fig4", "epochs": 1, "sources": ["sen12ms"]},
        },
        "downstream_tasks": ["sen12ms_cr"],
        "figures": {"fig4": True},
        "finetune": {
            "run": None, "in22k": False, "seeds": [0, 1], "gpus": 1, "defaults": {"epochs": 1},
            "tasks": {},
            "grids": {"fig4": {"inits": ["fig4_sar"], "transfers": ["stacked"], "seeds": None,
                               "tasks": {"sen12ms_cr": [1.0]}, "sensors": ["sar", "s2", "all"]}},
        },
        "cost": {"samples": {"geopile": 1000, "sen12ms": 300, "sen12ms_cr/train": 10},
                 "throughput": {"pretrain": 1.0, "finetune": 1.0}},
    }  # fmt: skip
    jobs, per_table = estimate(config, {}, throughput={})
    samples = dict(zip(jobs.job, jobs.samples, strict=True))
    assert samples["pretrain/multi"] == 60 * 15  # min(1000 // 10, 300 // 5) steps of 10 + 5
    assert samples["pretrain/fig4_sar"] == 60 * 5  # SEN12MS alone: 300 // 5 steps of 5
    cells = jobs[jobs.job.str.contains("/sen12ms_cr/fig4_sar/")]
    assert len(cells) == 6 and set(cells.samples) == {10}  # 3 sensor subsets x 2 seeds
    assert set(per_table.index) == {"table6", "fig4"}
