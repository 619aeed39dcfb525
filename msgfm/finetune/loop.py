"""The finetuning job: one table cell (task x fraction x init x transfer x seed) end to end.

It shares the pretraining job's skeleton (:mod:`msgfm.train.job`) because a cluster interrupts
it the same way:
- it resumes from ``<out>/checkpoints/last.pt`` exactly (seeded data order and flips, saved RNG
  states for dropout/stochastic depth) and continues its MLflow run;
- SIGTERM/SIGINT/SIGURG (preemption, Ctrl-C, time limit) → checkpoint after the step → exit 75;
- only rank 0 writes files, evaluates and talks to MLflow; every rank sees the same stop decision.
Optimisation follows GFM's finetuning: AdamW with layer-wise learning-rate decay, linear warm-up
then cosine decay stepped per iteration, gradient clipping. No masking (paper App. C.2).

The model is evaluated once, after the last epoch, on the **test** split; there is no model
selection on the validation split (the paper reports the final model). Outputs, in order:
``config.json`` (the resolved config), checkpoints, and ``metrics.json`` written atomically
last (the workflow's output: its presence means the cell is complete).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from msgfm.data.shards import ShardSet
from msgfm.data.statistics import role_statistics
from msgfm.finetune.data import (
    EpochBatchSampler,
    TaskDataset,
    TaskSpec,
    collate,
    role_tensor,
    task_spec,
    with_sensors,
)
from msgfm.finetune.subsets import train_split
from msgfm.model.factory import resolve_config
from msgfm.plan import BASELINE_INITS, fraction_label
from msgfm.train.checkpoint import TrainPosition, unwrap
from msgfm.train.job import Job, open_tracked_run, resumed_trainer, run_job, write_metrics
from msgfm.train.optim import build_optimization
from msgfm.train.runner import Trainer, make_loader


def run_finetuning(cfg: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Finetune one cell; returns the test metrics. Raises Preempted after a checkpoint."""
    return run_job(cfg, out_dir, stage="finetune", seed=int(cfg["seed"]), train=_finetune)


def task_loss(spec: TaskSpec) -> nn.Module:
    """Multi-label BCE (BigEarthNet), L1 on [0, 1] images (regression), CE ignoring 255."""
    if spec.kind == "classification":
        return nn.BCEWithLogitsLoss()
    if spec.kind == "regression":
        return nn.L1Loss()
    return nn.CrossEntropyLoss(ignore_index=spec.ignore_index)


def native_sizes(
    spec: TaskSpec, shards: ShardSet, data_size: int | None = None
) -> tuple[int, int | None]:
    """The first input's side (the encoder size is derived from it) and a dense target's side,
    as the data arrive (``data_size`` when the data are resampled)."""
    roles = shards.meta["roles"]
    native = data_size or int(roles[spec.inputs[0][0]]["shape"][-1])
    output = data_size or int(roles[spec.target]["shape"][-1])
    return native, output if spec.kind != "classification" else None


def build_cell_model(
    cfg: Mapping[str, Any], spec: TaskSpec, shards: ShardSet, train: ShardSet
) -> nn.Module:
    """A cell's model: backbone from its init (a pretraining variant's encoder.pt, random,
    in22k) + task head; stems without statistics of their own standardise with those of
    ``train``'s inputs."""
    from msgfm.finetune.model import build_finetune_model

    settings = cfg["finetune"]
    native, output = native_sizes(spec, shards, settings.get("data_size"))
    # a pretraining variant's encoder is msGFM weights; random and in22k name their own
    weights = cfg["init"] if cfg["init"] in BASELINE_INITS else "msgfm"
    roles = [role for role, _ in spec.inputs]
    return build_finetune_model(
        spec.name,
        weights=weights,
        sensors=[role for role, _ in spec.inputs],
        transfer=cfg["transfer"],
        checkpoint=cfg.get("checkpoint"),
        model_cfg={**cfg["model"], "drop_path_rate": float(settings["drop_path_rate"])},
        native_size=native,
        img_size=settings.get("img_size"),
        output_size=output,
        input_statistics={role: role_statistics([train], role, role_tensor) for role in roles},
        band_valid={
            role: valid
            for role, valid in shards.meta.get("valid_bands", {}).items()
            if role in roles
        },
    )


def start_head_at_prior(model: nn.Module, spec: TaskSpec, train: ShardSet) -> None:
    """Start the head's output at what the training split says before any image is seen: the
    label frequencies (classification) or the targets' per-band mean (regression), so a short
    schedule spends its steps on the features, not on learning the prior through a bias."""
    if spec.kind == "classification":
        positives = np.sum([train.get(i, [spec.target])[spec.target] for i in range(len(train))], 0)
        model.head.init_bias_to_prior(torch.as_tensor(positives), len(train))
    elif spec.kind == "regression":
        mean, _ = role_statistics([train], spec.target, role_tensor)
        model.head.init_bias_to_mean(mean)


def _finetune(job: Job) -> dict[str, Any]:
    cfg, settings, ctx = job.cfg, job.settings, job.ctx
    # "sensors": those fed (Fig. 4's single-sensor columns); absent/None = all the task's
    spec = with_sensors(task_spec(cfg["task"]), cfg.get("sensors"))
    shards = ShardSet(cfg["shards"])
    train = train_split(cfg["shards"], cfg.get("subset"))
    loader, steps_per_epoch = _train_data(job, spec, train)

    model = build_cell_model(cfg, spec, shards, train).to(ctx.device)
    start_head_at_prior(model, spec, train)
    epochs = int(settings["epochs"])
    optimizer, scheduler = _optimization(job, model, epochs, steps_per_epoch)
    tracked = open_tracked_run(
        job, run_name=cell_run_name(cfg, spec), tags=cell_tags(cfg, spec),
        entry_point="python -m msgfm finetune",
    )  # fmt: skip
    tracked.log_shard_sets([shards])
    trainer = resumed_trainer(
        job, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
        tracked=tracked, epochs=epochs, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    loss_fn = task_loss(spec)
    aux_weight = float(resolve_config(cfg["model"])["aux_weight"])

    def step(batch: Any, position: TrainPosition) -> tuple[torch.Tensor, dict[str, Any], int]:
        inputs = {s: x.to(ctx.device, non_blocking=True) for s, x in batch["inputs"].items()}
        target = batch["target"].to(ctx.device, non_blocking=True)
        with trainer.precision.autocast():
            output = trainer.train_model(inputs)
        task = loss_fn(output.float(), target)
        # The MoE balancing loss keeps routing balanced in finetuning too (Swin-MoE).
        aux = model.aux_loss()
        return (
            task + aux_weight * aux,
            {"task_loss": task.detach(), "aux": aux.detach()},
            len(target),
        )

    last = trainer.run(step)
    metrics: dict[str, Any] = {}
    if ctx.is_main:
        metrics = _test(job, spec, shards, model, trainer, last, train_samples=len(train))
        tracked.finish()
    if ctx.distributed:
        torch.distributed.barrier()
    return metrics


def _train_data(job: Job, spec: TaskSpec, train: ShardSet) -> tuple[DataLoader, int]:
    """This rank's share of the seeded, flipped training batches and the steps of an epoch."""
    settings, ctx = job.settings, job.ctx
    dataset = TaskDataset(
        spec, train, augment=True, seed=job.seed, data_size=settings.get("data_size")
    )
    sampler = EpochBatchSampler(
        len(dataset), int(settings["batch_size"]), seed=job.seed,
        rank=ctx.rank, world_size=ctx.world_size,
    )  # fmt: skip
    loader = make_loader(
        dataset, sampler, collate, workers=int(settings["num_workers"]), seed=job.seed, ctx=ctx
    )
    return loader, job.steps_per_epoch(sampler.steps_per_epoch)


def _optimization(
    job: Job, model: nn.Module, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with layer-wise learning-rate decay, warm-up then cosine (GFM's finetuning)."""
    from msgfm.finetune.model import layer_decay_groups

    settings = job.settings
    groups = layer_decay_groups(
        model,
        base_lr=float(settings["lr"]),
        layer_decay=float(settings["layer_decay"]),
        weight_decay=float(settings["weight_decay"]),
    )
    return build_optimization(
        groups, settings, lr=float(settings["lr"]), epochs=epochs, steps_per_epoch=steps_per_epoch
    )


def cell_run_name(cfg: Mapping[str, Any], spec: TaskSpec) -> str:
    """task/init/transfer/frac<fraction>/seed<seed>, then the sensors fed when not all."""
    name = (
        f"{cfg['task']}/{cfg['init']}/{cfg['transfer']}/frac{fraction_label(cfg['fraction'])}"
        f"/seed{int(cfg['seed'])}"
    )
    return name + (f"/{'+'.join(spec.sensors)}" if cfg.get("sensors") else "")


def cell_tags(cfg: Mapping[str, Any], spec: TaskSpec) -> dict[str, str]:
    """The encoder's tags from the workflow (table, moe, cross_rate, ...), then the cell's:
    the MLflow compare view lines runs up by them."""
    return {
        "moe": str(bool(resolve_config(cfg["model"])["moe"]["enabled"])),
        **cfg.get("tags", {}),
        "stage": "finetune",
        "init": cfg["init"],
        "task": cfg["task"],
        "fraction": fraction_label(cfg["fraction"]),
        "variant": cfg["init"],
        "transfer": cfg["transfer"],
        "sensors": "+".join(spec.sensors),
        "seed": str(int(cfg["seed"])),
    }


def _test(
    job: Job,
    spec: TaskSpec,
    shards: ShardSet,
    model: nn.Module,
    trainer: Trainer,
    last: Mapping[str, Any],
    *,
    train_samples: int,
) -> dict[str, Any]:
    """Evaluate the final model on the test split (no model selection: the paper reports the
    final model), log the scores and write ``metrics.json``. Rank 0 only."""
    cfg, settings = job.cfg, job.settings
    data_size = settings.get("data_size")
    test = TaskDataset(spec, shards.split("test"), augment=False, data_size=data_size)
    scores = evaluate(
        model, spec, test, int(settings["eval_batch_size"]), job.ctx.device,
        trainer.precision.dtype,
    )  # fmt: skip
    steps = trainer.position.global_step
    trainer.tracked.log_metrics({f"test/{k}": v for k, v in scores.items()}, steps)
    metrics = {
        "task": cfg["task"], "init": cfg["init"], "transfer": cfg["transfer"],
        "sensors": "+".join(spec.sensors), "fraction": float(cfg["fraction"]), "seed": job.seed,
        "split": "test", "train_samples": train_samples, "test_samples": len(test),
        "epochs": int(settings["epochs"]), "steps": steps, "img_size": model.input_size,
        "train_loss": last.get("task_loss"), "device_hours": last["device_hours"],
        "config_hash": job.config_hash, **scores,
    }  # fmt: skip
    write_metrics(job, trainer.tracked, metrics)
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    spec: TaskSpec,
    dataset: TaskDataset,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """The paper's metrics of ``model`` over a whole split (in order, no augmentation), under
    the training job's autocast dtype ``amp`` (None: fp32)."""
    from msgfm.finetune.metrics import RegressionMetrics, SegmentationMetrics, multilabel_map

    model = unwrap(model)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    scores, targets = [], []
    regression = RegressionMetrics()
    segmentation = SegmentationMetrics(spec.num_outputs, spec.ignore_index or 255)
    for batch in loader:
        inputs = {s: x.to(device) for s, x in batch["inputs"].items()}
        target = batch["target"].to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            output = model(inputs).float()
        if spec.kind == "classification":
            scores.append(torch.sigmoid(output).cpu().numpy())
            targets.append(target.cpu().numpy())
        elif spec.kind == "regression":
            regression.update(output.clamp(0.0, 1.0), target)
        else:
            segmentation.update(output, target)
    model.train(was_training)
    if spec.kind == "classification":
        return multilabel_map(np.concatenate(scores), np.concatenate(targets).round())
    if spec.kind == "regression":
        return regression.compute()
    return segmentation.compute()
