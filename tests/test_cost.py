"""The pre-launch GPU-hour estimate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from msgfm.cost import estimate, requeue_limit

REPO = Path(__file__).resolve().parents[1]


def config() -> dict:
    return {
        "pretrain": {
            "nodes": 1,
            "gpus_per_node": 2,
            "epochs_cap": None,
            "max_steps_per_epoch": None,
            "sources": {
                "rgb": {"datasets": ["geopile"], "batch_size": 10, "lr": 1e-4},
                "pairs": {"datasets": ["sen12ms"], "batch_size": 5, "lr": 1e-5},
            },
        },
        "variants": {"a": {"table": "6", "epochs": 3}},
        "downstream_tasks": ["bigearthnet", "vaihingen"],
        "figures": {},
        "finetune": {
            "run": None,
            "in22k": False,
            "seeds": [0, 1],
            "gpus": 1,
            "defaults": {"epochs": 4},
            "tasks": {"vaihingen": {"epochs": 2}},
            "grids": {
                "table6": {
                    "inits": ["a", "in22k"],
                    "transfers": ["stacked"],
                    "seeds": None,
                    "sensors": ["all"],
                    "tasks": {"bigearthnet": [0.1], "vaihingen": [1.0]},
                }
            },
        },
        "cost": {
            "samples": {"geopile": 1000, "bigearthnet/train": 500},
            "throughput": {"pretrain": 10.0, "finetune": 5.0},
        },
        "resources": {"requeue_spare": 2},
    }


def test_gpu_hours_follow_the_batches_epochs_and_throughput() -> None:
    sizes = {"sen12ms": 300, "vaihingen/train": 40}  # tiled shard sets win over configured counts
    jobs, per_table = estimate(config(), sizes, throughput={"vaihingen": 2.0})
    pretrain = jobs[jobs.stage == "pretrain"].iloc[0]
    # steps/epoch = min(1000 // 20, 300 // 10) = 30; samples/epoch = 30 * 15 * 2 GPUs = 900
    assert pretrain.samples == 3 * 900
    assert pretrain.gpu_hours == pytest.approx(2700 / 10.0 / 3600)
    ben = jobs.set_index("job").loc["finetune/bigearthnet/a/stacked/frac0.1/seed1"]
    assert ben.samples == 4 * 50  # 4 epochs x 10 % of 500
    vai = jobs[jobs.job.str.startswith("finetune/vaihingen/")]
    assert len(vai) == 2  # one job per seed
    assert vai.gpu_hours.sum() == pytest.approx(2 * 40 * 2 / 2.0 / 3600)  # measured 2 samples/s
    assert not jobs.job.str.contains("in22k").any()  # disabled init costs nothing
    assert per_table.loc["table6", "total"] == pytest.approx(jobs.gpu_hours.sum())


def test_gpus_on_every_node_set_the_global_batch_and_the_device_hours() -> None:
    cfg = config()
    cfg["pretrain"].update(nodes=2, gpus_per_node=1)  # the same 2 GPUs on two nodes
    jobs, _ = estimate(cfg, {"sen12ms": 300, "vaihingen/train": 40}, throughput={})
    pretrain = jobs[jobs.stage == "pretrain"].iloc[0]
    assert (pretrain.nodes, pretrain.gpus, pretrain.samples) == (2, 2, 3 * 900)
    cfg["pretrain"].update(nodes=2, gpus_per_node=2)  # 4 GPUs: global batch 60, 15 steps/epoch
    jobs, _ = estimate(cfg, {"sen12ms": 300, "vaihingen/train": 40}, throughput={})
    assert jobs[jobs.stage == "pretrain"].iloc[0].samples == 3 * 15 * 15 * 4


def test_a_run_longer_than_the_time_limit_is_a_chain_of_requeues() -> None:
    cfg = config()
    cfg["variants"]["a"]["epochs"] = 4000  # 4000 x 900 samples / 10 per s / 2 GPUs = 50 h wall
    sizes = {"sen12ms": 300}
    # 24 h jobs train 23.75 h each: three jobs, two requeues, plus the spare
    assert requeue_limit(cfg, "a", sizes, runtime_min=1440) == 2 + 2
    assert requeue_limit(cfg, "a", sizes, runtime_min=600) == 5 + 2  # 9.75 h each: six jobs
    cfg["variants"]["a"]["epochs"] = 3  # minutes: one job, only the spare
    assert requeue_limit(cfg, "a", sizes, runtime_min=1440) == 2


def test_epochs_cap_and_override_as_the_workflow_applies_them() -> None:
    cfg = config()
    cfg["variants"]["b"] = {"table": "6", "epochs": 3}
    cfg["pretrain"].update(epochs_cap=2, epochs_override={"b": 5})
    jobs, _ = estimate(cfg, {"sen12ms": 300, "vaihingen/train": 40}, throughput={})
    samples = jobs[jobs.stage == "pretrain"].set_index("job").samples
    assert samples["pretrain/a"] == 2 * 900  # capped
    assert samples["pretrain/b"] == 5 * 900  # named: its own count, past the cap


def test_the_command_prints_the_paper_tables_cost() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "msgfm", "estimate-cost", "--configfile", "config/config.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("|")[1].strip(): line for line in result.stdout.splitlines()[3:] if "|" in line
    }
    assert {"table3", "table5", "table6"} <= set(rows)
    totals = {name: float(line.split("|")[-2]) for name, line in rows.items()}
    assert totals["table3"] > totals["table6"] > 0  # 800 epochs cost more than 100
