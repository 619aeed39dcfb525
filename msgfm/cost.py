"""What a configuration will cost before it runs: GPU-hours per job and per paper table.

The jobs priced are those the workflow runs, each once (msgfm.plan). A pretraining variant
costs epochs × samples per epoch / throughput; a finetuning cell costs epochs × its training
samples / throughput. Sample counts come from the shard sets when they
exist (measured), else from ``cost.samples`` (configured: the datasets' published sizes).
Throughput per GPU is configured (``cost.throughput``) or, with ``measured=True``, the mean
``samples_per_s`` that finished jobs of the same kind logged to MLflow. After the run, every
job logs its actual ``cost/device_hours`` for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from msgfm import plan

SECONDS_PER_HOUR = 3600.0
# Minutes of each time-limited SLURM job that train nothing: start-up, data statistics, the
# warning lead in which the job checkpoints, the requeue.
ATTEMPT_OVERHEAD_MIN = 15


def shard_sizes(shards_root: Path) -> dict[str, int]:
    """Samples per tiled dataset (and per split for downstream tasks), read from the indexes."""
    sizes: dict[str, int] = {}
    for index in sorted(shards_root.glob("*/*/index.parquet")):
        frame = pd.read_parquet(index, columns=["split"])
        name = index.parent.name
        sizes[name] = len(frame)
        if index.parent.parent.name == "downstream":
            sizes[f"{name}/train"] = int((frame["split"] == "train").sum())
    return sizes


def measured_throughput(uri: str, experiments: Iterable[str]) -> dict[str, float]:
    """Mean logged samples/s per job kind ("pretrain" or a task name) of finished runs."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found: dict[str, list[float]] = {}
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'"):
            rate = run.data.metrics.get("samples_per_s_per_device")
            if rate:
                found.setdefault(run.data.tags.get("task", "pretrain"), []).append(rate)
    return {kind: sum(rates) / len(rates) for kind, rates in found.items()}


def _samples(sizes: Mapping[str, int], dataset: str, configured: Mapping[str, int]) -> int:
    if dataset in sizes:
        return sizes[dataset]
    if dataset in configured:
        return int(configured[dataset])
    raise KeyError(f"no sample count for {dataset!r}: tile it first or set cost.samples.{dataset}")


def pretrain_samples(config: Mapping[str, Any], variant: str, sizes: Mapping[str, int]) -> int:
    """Samples a variant's job trains on: epochs × the samples of an epoch of heterogeneous
    batches, whose global size is the per-GPU batch × the job's GPUs on all its nodes."""
    pre = config["pretrain"]
    gpus = int(pre["nodes"]) * int(pre["gpus_per_node"])
    names = plan.variant_sources(pre["sources"], config["variants"][variant])
    sources = [pre["sources"][name] for name in names]
    configured = config["cost"]["samples"]
    source_sizes = [
        sum(_samples(sizes, d, configured) for d in source["datasets"]) for source in sources
    ]
    steps = min(n // (s["batch_size"] * gpus) for n, s in zip(source_sizes, sources, strict=True))
    if pre.get("max_steps_per_epoch"):
        steps = min(steps, pre["max_steps_per_epoch"])
    per_epoch = steps * sum(s["batch_size"] for s in sources) * gpus
    return plan.variant_epochs(config, variant) * per_epoch


def pretrain_jobs(
    config: Mapping[str, Any], sizes: Mapping[str, int], throughput: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One line per pretraining job (msgfm.plan)."""
    pre = config["pretrain"]
    rate = throughput.get("pretrain", config["cost"]["throughput"]["pretrain"])
    lines = []
    for name in plan.pretrain_variants(config):
        table = config["variants"][name]["table"]
        samples = pretrain_samples(config, name, sizes)
        lines.append(
            {
                # the grid that finetunes it: table3/5/6, or fig4 for the Fig. 4 variants
                "table": table if table.startswith("fig") else f"table{table}",
                "stage": "pretrain",
                "job": plan.pretrain_job_dir(name),
                "nodes": int(pre["nodes"]),
                "gpus": int(pre["nodes"]) * int(pre["gpus_per_node"]),
                "samples": samples,
                "gpu_hours": samples / rate / SECONDS_PER_HOUR,
            }
        )
    return lines


def finetune_jobs(
    config: Mapping[str, Any], sizes: Mapping[str, int], throughput: Mapping[str, float]
) -> list[dict[str, Any]]:
    """One line per finetuning job (msgfm.plan), under the first grid that names it: a cell
    that Table 12 or Fig. 4 shares with Table 6 is counted once, as it runs once."""
    settings = config["finetune"]
    configured = config["cost"]["samples"]
    lines = []
    for cell, grid in plan.finetune_cells(config).items():
        recipe = {**settings["defaults"], **settings["tasks"].get(cell.task, {})}
        train = _samples(sizes, f"{cell.task}/train", configured)
        rate = throughput.get(cell.task, config["cost"]["throughput"]["finetune"])
        samples = recipe["epochs"] * max(1, round(train * float(cell.fraction)))
        lines.append(
            {
                "table": grid,
                "stage": "finetune",
                "job": cell.job_dir,
                "nodes": 1,
                "gpus": int(settings["gpus"]),
                "samples": samples,
                "gpu_hours": samples / rate / SECONDS_PER_HOUR,
            }
        )
    return lines


def estimate(
    config: Mapping[str, Any], sizes: Mapping[str, int], throughput: Mapping[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per job, per table) GPU-hours of a configuration."""
    lines = pretrain_jobs(config, sizes, throughput) + finetune_jobs(config, sizes, throughput)
    jobs = pd.DataFrame(lines)
    per_table = (
        jobs.pivot_table(index="table", columns="stage", values="gpu_hours", aggfunc="sum")
        .fillna(0.0)
        .assign(total=lambda frame: frame.sum(axis=1))
    )
    return jobs, per_table


def requeue_limit(
    config: Mapping[str, Any], variant: str, sizes: Mapping[str, int], *, runtime_min: int
) -> int:
    """Times a variant's SLURM job may requeue itself at its time limit (msgfm.train.launch):
    the chain of ``runtime_min``-minute jobs its estimated wall time needs, less the first,
    plus ``resources.requeue_spare`` for preemptions and slower nodes than estimated."""
    pre = config["pretrain"]
    gpus = int(pre["nodes"]) * int(pre["gpus_per_node"])
    rate = config["cost"]["throughput"]["pretrain"]
    wall_min = pretrain_samples(config, variant, sizes) / rate / 60 / gpus
    chain = math.ceil(wall_min / max(runtime_min - ATTEMPT_OVERHEAD_MIN, 1))
    return max(chain - 1, 0) + int(config["resources"]["requeue_spare"])
