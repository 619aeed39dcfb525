"""Checkpoints that make a resumed run continue exactly where the interrupted one stopped.

A checkpoint holds everything that decides the next step: model, optimiser and scheduler
state, every rank's random generators (Python, NumPy, torch CPU and CUDA: each rank draws its
own MoE gate noise), the data position (epoch and step within it) and the process layout it was
written under (world size, per-rank and global batch), so that a job killed by SLURM and
requeued produces bitwise the same weights on CPU as one that was never interrupted. Files are
written to a temporary name (``.last.pt.tmp-<pid>``) and renamed, so a kill during the write
leaves the previous checkpoint intact; a SIGKILL leaves the partial file behind, which the next
resume removes (:mod:`msgfm.files`).

A resume under another world size is refused, naming both: the data slices, the schedule (in
steps) and the global batch all follow the world size, so continuing would silently train
another run.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msgfm.errors import MsgfmError
from msgfm.files import atomic_path, remove_stale_temp_files

log = logging.getLogger(__name__)
LAST = "last.pt"


class CheckpointError(MsgfmError):
    """A checkpoint is unreadable."""


@dataclass
class TrainPosition:
    """Where training stands: the next step to run is ``step`` of ``epoch``."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class ProcessLayout:
    """The processes a checkpoint was written by: what a resume must match."""

    world_size: int
    per_rank_batch: dict[str, int]

    @property
    def global_batch(self) -> dict[str, int]:
        return {name: size * self.world_size for name, size in self.per_rank_batch.items()}

    def describe(self) -> str:
        return f"{self.world_size} process(es), global batch {self.global_batch}"


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: TrainPosition,
    config_hash: str,
    rng_states: list[dict[str, Any]],
    layout: ProcessLayout,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/last.pt`` atomically and return its path (rank 0 only).

    ``rng_states``: every rank's :func:`rng_state`, in rank order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "position": asdict(position),
        "rng": rng_states,
        "layout": {**asdict(layout), "global_batch": layout.global_batch},
        "config_hash": config_hash,
        "extra": extra or {},
    }
    path = directory / LAST
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config_hash: str,
    layout: ProcessLayout,
    rank: int = 0,
) -> tuple[TrainPosition, dict[str, Any]] | None:
    """Restore the state saved in ``directory`` if there is one; None for a fresh start.

    A checkpoint written by another number of processes stops the job with both counts
    (module docstring). A checkpoint written under another configuration is never resumed
    (that would mix two ablation rows in one table cell): rank 0 moves it aside to
    ``superseded-<its hash>.pt``, kept for the user, and training starts afresh on every rank
    (a rank that finds the file already moved starts afresh too). This is what happens when a
    config change makes Snakemake rerun a job whose folder still holds the old run's checkpoint.
    One of this config that does not fit the model or optimizer stops the job naming the file,
    before anything is loaded.
    """
    path = Path(directory) / LAST
    if rank == 0:
        remove_stale_temp_files(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({exc}); delete it to restart"
        ) from exc
    if "layout" not in payload:
        raise CheckpointError(
            f"{path} was written by an older msgfm that did not record its process layout; "
            "move it away to start afresh"
        )
    saved = ProcessLayout(payload["layout"]["world_size"], payload["layout"]["per_rank_batch"])
    if saved.world_size != layout.world_size:
        raise CheckpointError(
            f"{path} was written by {saved.describe()}; this run has {layout.describe()}. "
            f"Run it again with {saved.world_size} process(es) (pretrain.nodes x "
            "pretrain.gpus_per_node), or move the checkpoint away to start afresh"
        )
    if payload.get("config_hash") != config_hash:
        aside = path.with_name(f"superseded-{payload.get('config_hash')}.pt")
        if rank != 0:
            return None
        os.replace(path, aside)
        log.warning(
            "%s was written for config %s, this run's config is %s: moved it to %s and "
            "starting afresh",
            path, payload.get("config_hash"), config_hash, aside,
        )  # fmt: skip
        return None
    _check_fits(path, payload, unwrap(model), optimizer)
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"][rank])
    return TrainPosition(**payload["position"]), payload["extra"]


def _check_fits(
    path: Path, payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Stop before anything is loaded when a checkpoint of this config does not fit this model
    (copied from another job, written by an msgfm with other parameter names): torch would
    copy the parameters that fit before raising, leaving a half-restored model."""
    expected = model.state_dict()
    saved = payload.get("model") or {}
    wrong = sorted(set(expected) ^ set(saved))
    wrong += sorted(
        name
        for name in set(expected) & set(saved)
        if tuple(saved[name].shape) != tuple(expected[name].shape)
    )
    if wrong:
        raise CheckpointError(
            f"{path} has this run's config hash but not its model: {len(wrong)} of "
            f"{len(expected)} parameters missing, extra or of another shape (first "
            f"{wrong[:3]}); move it away to start afresh"
        )
    groups = [len(group["params"]) for group in optimizer.state_dict()["param_groups"]]
    saved_groups = [len(group["params"]) for group in payload["optimizer"]["param_groups"]]
    if groups != saved_groups:
        raise CheckpointError(
            f"{path} has this run's config hash but its optimizer groups hold {saved_groups} "
            f"parameters, this run's {groups}; move it away to start afresh"
        )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (checkpoints never hold DDP keys)."""
    return model.module if hasattr(model, "module") else model
