"""The skeleton every training job shares: its process, its identity, its MLflow run, its
resumed :class:`~msgfm.train.runner.Trainer` and its closing files.

A job (:mod:`msgfm.pretrain.loop`, :mod:`msgfm.finetune.loop`) reads as a page of named steps:
:func:`run_job` joins the process group and hands a :class:`Job` to the job's own function,
which builds its data, model and optimiser, then calls :func:`open_tracked_run`,
:func:`resumed_trainer`, ``trainer.run(step)`` and :func:`write_metrics`. What must be the same
in every job, because a cluster interrupts them all alike, lives here once: the seed set before
anything is built, the world-size check, ``config.json`` written by rank 0 only, the run's tags
and params, the checkpoint folder and the resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from msgfm.errors import MsgfmError
from msgfm.files import write_json_atomic
from msgfm.redaction import redact
from msgfm.tracked_run import TrackedRun
from msgfm.tracking import job_hash, resolve_tracking_uri, source_tags
from msgfm.train.distributed import (
    DistContext,
    check_world_size,
    cleanup_distributed,
    init_distributed,
)
from msgfm.train.precision import job_precision
from msgfm.train.runner import PREEMPT_CHECK_EVERY, Trainer, wrap_ddp
from msgfm.train.speed import prepare_model


@dataclass(frozen=True)
class Job:
    """One training job as its steps see it: the resolved config, its stage's settings
    (``cfg["pretrain"]`` or ``cfg["finetune"]``), its folder, this process and its identity."""

    cfg: Mapping[str, Any]
    settings: Mapping[str, Any]
    out: Path
    ctx: DistContext
    seed: int
    config_hash: str  # msgfm.tracking.job_hash: guards the checkpoint, resumes the run

    def steps_per_epoch(self, sampler_steps: int) -> int:
        """The sampler's steps per epoch, capped by the settings' ``max_steps_per_epoch``
        (short demo and test jobs)."""
        cap = self.settings.get("max_steps_per_epoch")
        return min(sampler_steps, int(cap)) if cap else sampler_steps


def run_job(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    *,
    stage: str,
    seed: int,
    train: Callable[[Job], dict[str, Any]],
) -> dict[str, Any]:
    """Run ``train`` on this process's :class:`Job` inside the process group torchrun
    describes (none in a single process), which is left however ``train`` ends."""
    settings = cfg[stage]
    ctx = init_distributed(settings.get("device", "auto"))
    try:
        return train(_start(cfg, settings, Path(out_dir), ctx, seed))
    finally:
        cleanup_distributed()


def _start(
    cfg: Mapping[str, Any], settings: Mapping[str, Any], out: Path, ctx: DistContext, seed: int
) -> Job:
    """Refuse a config without an experiment before any work, seed the global RNG before
    anything is built (model init, then the MoE gate noise and dropout a checkpoint restores),
    check the process count and write the resolved config (redacted: uploaded to MLflow)."""
    if not cfg.get("experiment"):
        raise MsgfmError(
            "the job config has no 'experiment': the MLflow experiment of its run (the "
            "workflow passes msgfm.plan.experiment of the job's table, e.g. msgfm-table6)"
        )
    torch.manual_seed(seed)
    check_world_size(cfg.get("world_size"), ctx)
    job = Job(cfg, settings, out, ctx, seed, job_hash(cfg))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", redact(cfg))
    return job


def open_tracked_run(
    job: Job, *, run_name: str, tags: Mapping[str, str], entry_point: str
) -> TrackedRun:
    """The job's MLflow run (continued if its folder names one of the same config) in the
    config's experiment, with the job's ``tags``, the code behind it and its config hash;
    rank 0 only (a no-op object elsewhere)."""
    return TrackedRun(
        uri=resolve_tracking_uri(job.cfg.get("tracking_uri"), job.cfg["results_root"]),
        experiment=job.cfg["experiment"],
        run_name=run_name,
        state_dir=job.out,
        results_root=job.cfg["results_root"],
        tags={**tags, **source_tags(entry_point), "config_hash": job.config_hash},
        params=job.cfg,
        config_hash=job.config_hash,
        enabled=job.ctx.is_main,
    )


def resumed_trainer(
    job: Job,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: DataLoader,
    tracked: TrackedRun,
    epochs: int,
    steps_per_epoch: int,
    extra_metrics: Callable[[], Mapping[str, float]] = dict,
) -> Trainer:
    """The job's :class:`Trainer` over ``model`` as its settings want it trained (precision,
    speed switches, DDP on several ranks, clipping, logging and checkpoint cadence), at the
    step its checkpoint under ``<out>/checkpoints`` left off (step 0 without one).
    ``trainer.precision`` is the autocast a job's step and evaluation run under."""
    settings, ctx = job.settings, job.ctx
    precision = job_precision(settings.get("amp", "bf16"), ctx.device)
    trainer = Trainer(
        model=model, train_model=prepare_model(settings, ctx.device, model, wrap_ddp(model, ctx)),
        optimizer=optimizer, scheduler=scheduler,
        loader=loader, ctx=ctx, tracked=tracked, checkpoint_dir=job.out / "checkpoints",
        config_hash=job.config_hash, epochs=epochs, steps_per_epoch=steps_per_epoch,
        clip_grad=float(settings["clip_grad"]), log_every=int(settings["log_every"]),
        checkpoint_every=int(settings["checkpoint_every"]), extra_metrics=extra_metrics,
        precision=precision,
        preempt_check_every=int(settings.get("preempt_check_every", PREEMPT_CHECK_EVERY)),
    )  # fmt: skip
    trainer.resume()
    return trainer


def write_metrics(job: Job, tracked: TrackedRun, metrics: Mapping[str, Any]) -> None:
    """``<out>/metrics.json`` (atomically: a job's result), then it and ``config.json`` as
    the run's artifacts. Rank 0 only."""
    write_json_atomic(job.out / "metrics.json", metrics)
    tracked.log_artifact(job.out / "config.json")
    tracked.log_artifact(job.out / "metrics.json")
