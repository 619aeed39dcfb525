"""Checkpoints that make a resumed run continue exactly where the interrupted one stopped.

A checkpoint holds everything that decides the next step: model, optimiser and scheduler
state, every random generator (Python, NumPy, torch CPU and CUDA), the data position (epoch and
step within it) and the MLflow run id, so that a job killed by SLURM and requeued produces
bitwise the same weights on CPU as one that was never interrupted. Files are written to a
temporary name and renamed, so a kill during the write leaves the previous checkpoint intact.
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


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: TrainPosition,
    config_hash: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/last.pt`` atomically and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "position": asdict(position),
        "rng": rng_state(),
        "config_hash": config_hash,
        "extra": extra or {},
    }
    path = directory / LAST
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config_hash: str,
) -> tuple[TrainPosition, dict[str, Any]] | None:
    """Restore the state saved in ``directory`` if there is one; None for a fresh start.

    A checkpoint written under another configuration is never resumed (that would mix two
    ablation rows in one table cell): it is moved aside to ``superseded-<its hash>.pt``, kept
    for the user, and training starts afresh. This is what happens when a config change makes
    Snakemake rerun a job whose folder still holds the old run's checkpoint.
    """
    path = Path(directory) / LAST
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({exc}); delete it to restart"
        ) from exc
    if payload.get("config_hash") != config_hash:
        aside = path.with_name(f"superseded-{payload.get('config_hash')}.pt")
        os.replace(path, aside)
        log.warning(
            "%s was written for config %s, this run's config is %s: moved it to %s and "
            "starting afresh",
            path, payload.get("config_hash"), config_hash, aside,
        )  # fmt: skip
        return None
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    return TrainPosition(**payload["position"]), payload["extra"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (checkpoints never hold DDP keys)."""
    return model.module if hasattr(model, "module") else model
