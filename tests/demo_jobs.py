"""Training-job configs for the tests, built as the demo workflow builds them.

The job configs come from config/config.yaml + config/demo.yaml through the schema's defaults
and msgfm.plan (as rules/common.smk builds them), so a schema, demo or plan change reaches the
tests; each test states only what it changes (fewer steps, checkpoints and logs often enough
to interrupt and compare).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from msgfm import plan

REPO = Path(__file__).resolve().parents[1]
# What the pretraining tests change in every demo job: a few steps per epoch on one CPU,
# checkpoints often enough to interrupt between two, every step logged, half the demo's
# batches (the DDP tests halve them again, one sample per rank and source at least).
PRETRAIN_TEST_SETTINGS = {
    "max_steps_per_epoch": 4, "checkpoint_every": 3, "log_every": 1, "figure_examples": 1,
    "num_workers": 0, "device": "cpu",
}  # fmt: skip
TEST_BATCH_SIZES = {"rgb": 4, "sen12ms": 2, "mdas": 2}


@functools.cache
def _demo_config() -> dict[str, Any]:
    from msgfm.config_files import load_config

    return load_config([REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml"])


def demo_config() -> dict[str, Any]:
    """The demo workflow's config (a copy: change it freely)."""
    return copy.deepcopy(_demo_config())


def pretrain_job(
    shards: Path, results: Path, variant: str = "t6_moe_cross50", *, epochs: int = 2,
    **settings: Any,
) -> dict[str, Any]:  # fmt: skip
    """The demo workflow's job config of ``variant`` reading ``shards`` and writing under
    ``results``, trained ``epochs`` epochs with :data:`PRETRAIN_TEST_SETTINGS` and
    ``settings`` on top of the demo's pretraining settings; no MLflow store."""
    job = plan.pretrain_job(demo_config(), variant, str(shards), str(results))
    job["variant"]["epochs"] = epochs
    for name, batch_size in TEST_BATCH_SIZES.items():
        if name in job["pretrain"]["sources"]:
            job["pretrain"]["sources"][name]["batch_size"] = batch_size
    job["pretrain"].update({**PRETRAIN_TEST_SETTINGS, **settings})
    job["world_size"] = 1
    job["tracking_uri"] = None
    return job


# What the finetuning tests change in every demo cell: two short epochs of two steps on one
# CPU at half the demo's side, every step logged, stop checks every step (the preemption tests
# count them as steps), checkpoints only at the end unless a test interrupts.
FINETUNE_TEST_SETTINGS = {
    "epochs": 2, "warmup_epochs": 1, "max_steps_per_epoch": 2, "eval_batch_size": 8,
    "data_size": 32, "log_every": 1, "checkpoint_every": 100, "preempt_check_every": 1,
    "num_workers": 0, "device": "cpu",
}  # fmt: skip


def finetune_job(
    shards: Path, results: Path, task: str = "bigearthnet", *, init: str = "random",
    sensors: str = "all", **settings: Any,
) -> dict[str, Any]:  # fmt: skip
    """The demo workflow's job config of ``task``'s 100 % cell from ``init`` (seed 0, method
    2), reading the task's shard set in ``shards`` and writing under ``results``, with
    :data:`FINETUNE_TEST_SETTINGS` and ``settings`` on top of the demo's task settings. No
    encoder file: tests that start from one set ``checkpoint``."""
    cell = plan.Cell(task, init, "stacked", "1", 0, sensors)
    job = plan.finetune_job(demo_config(), cell, str(results))
    job.update(shards=str(shards / task), checkpoint=None, world_size=1)
    job["finetune"].update({**FINETUNE_TEST_SETTINGS, **settings})
    return job
