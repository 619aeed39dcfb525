"""The resumable training loop that pretraining and finetuning jobs share.

A job builds its data, model and optimiser, then hands a :class:`Trainer` a ``step``
function (one forward pass: loss, metrics to log, samples seen). The trainer owns what must
be identical everywhere: resuming from ``checkpoints/last.pt`` at the exact step, gradient
clipping, the per-iteration schedule, logging averaged over ranks, periodic checkpoints, and
turning SIGTERM/SIGINT/SIGURG into a checkpoint plus :class:`Preempted` on every rank at once.
It also accumulates the job's device-hours across resumptions, the cost the tables report.

A step that does not log reads nothing back from the device, so on a GPU the host queues the
next steps' kernels while the current ones run: the loss is checked for NaN/inf by a flag that
stays on the device until the next logging step or checkpoint, and the ranks agree on a stop
signal every ``preempt_check_every`` steps (and at each epoch's end), not every step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from msgfm.tracked_run import TrackedRun
from msgfm.train.checkpoint import (
    ProcessLayout,
    TrainPosition,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from msgfm.train.distributed import (
    DistContext,
    any_rank,
    broadcast_flag,
    gather_objects,
    mean_over_ranks,
)
from msgfm.train.precision import Precision
from msgfm.train.preemption import Preempted, PreemptionWatcher
from msgfm.train.resources import cpu_share

log = logging.getLogger(__name__)

# One forward pass: (loss to minimise, detached metrics to log, samples in this rank's batch).
StepFn = Callable[[Any, TrainPosition], tuple[torch.Tensor, Mapping[str, torch.Tensor], int]]
# Default of the configs' pretrain/finetune.preempt_check_every: steps between stop checks.
PREEMPT_CHECK_EVERY = 10


def make_loader(
    dataset: Dataset, batch_sampler: Any, collate: Callable, *, workers: int, seed: int,
    ctx: DistContext, persistent: bool = False,
) -> DataLoader:  # fmt: skip
    """A DataLoader whose worker seeding draws from a private generator: drawing from the
    global RNG would shift the MoE gate noise that a resumed run restores.

    ``workers`` is capped to this rank's CPU share (:func:`cpu_share`), which msgfm.cli gave
    the process as its thread count. ``persistent`` keeps the workers (and their open shard
    maps) across epochs instead of starting them again each epoch; only for a dataset that
    takes the epoch from its keys (no ``set_epoch``, which workers would never see again).
    """
    if persistent and hasattr(dataset, "set_epoch"):
        raise ValueError(f"{type(dataset).__name__} takes its epoch from set_epoch: not persistent")
    share = cpu_share(torch.get_num_threads(), workers=workers)
    if share.workers < workers:
        log.info(
            "%d DataLoader workers, not %d: this rank has %d CPUs",
            share.workers,
            workers,
            share.threads,
        )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=share.workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=persistent and share.workers > 0,
    )


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP around the model on several ranks. Unused parameters are expected: a step without
    an entry for some sensor leaves its stem and decoder without gradients."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


@dataclass
class Trainer:
    """Runs the remaining epochs of one job from wherever its checkpoint left off."""

    model: nn.Module  # the bare model: checkpointed, clipped
    train_model: nn.Module  # what the step calls (DDP-wrapped on several ranks)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    ctx: DistContext
    tracked: TrackedRun
    checkpoint_dir: Path
    config_hash: str
    epochs: int
    steps_per_epoch: int
    clip_grad: float
    log_every: int
    checkpoint_every: int
    preempt_check_every: int = PREEMPT_CHECK_EVERY
    extra_metrics: Callable[[], Mapping[str, float]] = dict
    precision: Precision = field(default_factory=Precision)  # fp16 loss scaling, checkpointed
    position: TrainPosition = field(default_factory=TrainPosition)
    device_seconds: float = 0.0
    # Any non-finite loss since the last check, on the device, and the (epoch, step) of the
    # first and last steps it covers.
    _nonfinite: torch.Tensor | None = field(default=None, init=False, repr=False)
    _unchecked: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)

    def resume(self) -> None:
        """Load the checkpoint written under this config, if any (else start at step 0)."""
        resumed = load_checkpoint(
            self.checkpoint_dir, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, config_hash=self.config_hash, layout=self.layout,
            rank=self.ctx.rank,
        )  # fmt: skip
        if self.ctx.distributed:  # every rank has read the file before the next write
            torch.distributed.barrier()
        if resumed:
            self.position, extra = resumed
            self.device_seconds = float(extra.get("device_seconds", 0.0))
            self.precision.load_state_dict(extra.get("grad_scaler", {}))
            log.info("resuming at epoch %d step %d", self.position.epoch, self.position.step)

    @property
    def layout(self) -> ProcessLayout:
        return ProcessLayout(self.ctx.world_size, dict(self.loader.batch_sampler.batch_sizes))

    @property
    def device_hours(self) -> float:
        """Wall time × processes (GPUs on a cluster) spent training, over all attempts."""
        return self.device_seconds * self.ctx.world_size / 3600.0

    def checkpoint(self) -> None:
        """Save the state on rank 0 (after every rank agrees the losses so far were finite)."""
        self._raise_if_nonfinite()
        rng_states = gather_objects(rng_state(), self.ctx)  # each rank draws its own noise
        if self.ctx.is_main:
            save_checkpoint(
                self.checkpoint_dir, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, position=self.position, config_hash=self.config_hash,
                rng_states=rng_states, layout=self.layout,
                extra={"device_seconds": self.device_seconds,
                       "grad_scaler": self.precision.state_dict()},
            )  # fmt: skip
        self.tracked.flush()  # the store holds every point up to the checkpoint
        if self.ctx.distributed:
            torch.distributed.barrier()

    def run(self, step: StepFn) -> dict[str, float]:
        """Train to the end; returns the last logged metrics. Raises Preempted on a signal."""
        sampler, dataset = self.loader.batch_sampler, self.loader.dataset
        position, last = self.position, {}
        with PreemptionWatcher() as watcher:
            while position.epoch < self.epochs:
                sampler.set_epoch(position.epoch, start_step=position.step)
                if hasattr(dataset, "set_epoch"):  # else the sampler's keys carry the epoch
                    dataset.set_epoch(position.epoch)
                self.train_model.train()
                clock = window_start = time.perf_counter()
                window_samples = 0
                for batch in self.loader:
                    if position.step >= self.steps_per_epoch:
                        break
                    loss, parts, grad_norm, samples = self._optimise(step, batch)
                    window_samples += samples
                    now = time.perf_counter()
                    self.device_seconds += now - clock
                    clock = now
                    epoch_end = position.step == self.steps_per_epoch
                    if self._due(self.log_every) or epoch_end:
                        self._raise_if_nonfinite(parts)
                        last = self._log(loss, parts, grad_norm, window_samples, now - window_start)
                        window_start, window_samples = time.perf_counter(), 0
                    stop = self._stop_requested(watcher, epoch_end)
                    if stop or self._due(self.checkpoint_every):
                        self.checkpoint()
                    if stop:
                        self.tracked.finish("KILLED")
                        raise Preempted(
                            f"stopped by signal at epoch {position.epoch} step {position.step}; "
                            f"checkpoint in {self.checkpoint_dir}"
                        )
                position.epoch += 1
                position.step = 0
                self.tracked.log_metrics({"epoch": position.epoch}, step=position.global_step)
            self.checkpoint()
        self.tracked.log_metrics({"cost/device_hours": self.device_hours}, position.global_step)
        return {**last, "device_hours": self.device_hours}

    def _due(self, every: int) -> bool:
        return self.position.global_step % every == 0

    def _stop_requested(self, watcher: PreemptionWatcher, epoch_end: bool) -> bool:
        """Whether any rank saw a stop signal, asked only every ``preempt_check_every`` steps
        and at an epoch's end: the all-reduce and its read make the host wait for the device.
        Every rank asks at the same global steps, so all take the same decision."""
        if not (epoch_end or self._due(self.preempt_check_every)):
            return False
        return broadcast_flag(watcher.triggered, self.ctx)

    def _record_finite(self, loss: torch.Tensor) -> None:
        """Fold this step's loss into the device-side non-finite flag (no host read)."""
        here = (self.position.epoch, self.position.step)
        if self._nonfinite is None:
            self._nonfinite = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._unchecked = [here, here]
        self._unchecked[1] = here
        self._nonfinite |= ~torch.isfinite(loss.detach())

    def _raise_if_nonfinite(self, parts: Mapping[str, torch.Tensor] | None = None) -> None:
        """Read the flag (one host sync, agreed by all ranks) and fail naming the window of
        steps it covers; ``parts``: the latest step's metrics, for the message."""
        flag, self._nonfinite = self._nonfinite, None
        if flag is None or not any_rank(flag, self.ctx):
            return
        (first_epoch, first_step), (last_epoch, last_step) = self._unchecked
        components = {k: round(float(v), 6) for k, v in (parts or {}).items()}
        raise FloatingPointError(
            f"non-finite loss in a step from epoch {first_epoch} step {first_step} to epoch "
            f"{last_epoch} step {last_step}; the last step's components {components}"
        )

    def _optimise(
        self, step: StepFn, batch: Any
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor], torch.Tensor, int]:
        """One optimisation step: forward (the job's), backward, clip, update, schedule.
        Nothing is read back from the device here (see the module doc)."""
        position = self.position
        loss, parts, samples = step(batch, position)
        self._record_finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        grad_norm = self.precision.clip_and_step(
            self.optimizer, self.model.parameters(), self.clip_grad
        )
        position.step += 1
        position.global_step += 1
        self.scheduler.step_update(position.global_step)
        return loss, parts, grad_norm, samples

    def _log(
        self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], grad_norm: torch.Tensor,
        samples: int, elapsed: float,
    ) -> dict[str, float]:  # fmt: skip
        metrics = mean_over_ranks({"loss": loss.detach(), **parts}, self.ctx)
        metrics.update(self.extra_metrics())
        metrics["grad_norm"] = float(grad_norm)
        metrics["lr"] = max(group["lr"] for group in self.optimizer.param_groups)
        metrics["samples_per_s"] = samples * self.ctx.world_size / max(elapsed, 1e-9)
        metrics["samples_per_s_per_device"] = samples / max(elapsed, 1e-9)
        self.tracked.log_metrics(metrics, step=self.position.global_step)
        if self.ctx.is_main:
            log.info(
                "epoch %d step %d/%d loss %.4f %.1f samples/s",
                self.position.epoch, self.position.step, self.steps_per_epoch,
                metrics["loss"], metrics["samples_per_s"],
            )  # fmt: skip
        return metrics
