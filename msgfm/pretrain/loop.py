"""The msGFM pretraining job: one variant (a Table 5/6 row or the 800-epoch model) end to end.

What a job guarantees, because a cluster will interrupt it:
- it resumes from ``<out>/checkpoints/last.pt`` exactly (position-seeded masks, cross draws,
  data order and flips; saved RNG states for the MoE gate noise), and continues its MLflow run;
- SIGTERM/SIGUSR1 (preemption, time limit) → checkpoint at the end of the step → exit 75;
- only rank 0 writes files or talks to MLflow; every rank sees the same stop decision.
Outputs: ``encoder.pt`` ({"config", "model"} loadable by ``msgfm.model.factory.load_encoder``),
``metrics.json``, ``config.json`` (the resolved config) and one reconstruction figure per
pretraining entry (none when the model reconstructs teacher features).
A Table 5 variant also builds a frozen teacher (msgfm.pretrain.teachers) whose targets are
computed per step under no_grad; it is never wrapped in DDP nor checkpointed (it is rebuilt
identically: hub weights, or a seeded random model).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from msgfm.data.loader import MultiSourceBatchSampler, MultiSourceDataset, collate_multisource
from msgfm.data.shards import ShardSet
from msgfm.model.factory import build_mask_generator, build_model
from msgfm.model.moe import MoEMlp
from msgfm.pretrain.batches import (
    SourceSpec,
    loss_weights,
    make_entries,
    sensor_lr_scales,
    sensor_roles,
)
from msgfm.pretrain.figures import save_reconstruction_figure
from msgfm.pretrain.reconstruct import reconstruction_examples
from msgfm.pretrain.teachers import add_teacher_targets, model_overrides, teacher_for_variant
from msgfm.tracking import TrackedRun, config_hash, git_commit, resolve_tracking_uri
from msgfm.train.checkpoint import TrainPosition, load_checkpoint, save_checkpoint, unwrap
from msgfm.train.distributed import (
    DistContext,
    all_reduce_mean,
    broadcast_flag,
    cleanup_distributed,
    init_distributed,
)
from msgfm.train.optim import build_optimizer, build_scheduler, param_groups
from msgfm.train.preemption import Preempted, PreemptionWatcher

log = logging.getLogger(__name__)


def source_specs(pretrain: Mapping[str, Any]) -> list[SourceSpec]:
    return [
        SourceSpec(name, tuple(spec["datasets"]), int(spec["batch_size"]), float(spec["lr"]))
        for name, spec in pretrain["sources"].items()
    ]


def model_config(cfg: Mapping[str, Any], teacher_dim: int | None = None) -> dict[str, Any]:
    """The model config of a variant: the shared model settings with its MoE switch and, for
    a Table 5 objective, the distillation head or feature decoders sized to its teacher."""
    model = json.loads(json.dumps(cfg["model"]))
    model.setdefault("moe", {})["enabled"] = bool(cfg["variant"]["moe"])
    overrides = model_overrides(cfg["variant"].get("objective", "mim"), teacher_dim)
    for key, values in overrides.items():
        model.setdefault(key, {}).update(values)
    return model


def open_sources(
    specs: list[SourceSpec], shards_root: Path
) -> tuple[dict[str, list[ShardSet]], dict[str, list[str]]]:
    sets = {s.name: [ShardSet(shards_root / d) for d in s.datasets] for s in specs}
    sensors = {name: sensor_roles(group[0].roles) for name, group in sets.items()}
    return sets, sensors


def moe_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Dropped-token share and expert-load imbalance (cv) averaged over the MoE blocks."""
    dropped, imbalance = [], []
    for module in unwrap(model).modules():
        if isinstance(module, MoEMlp) and module.last_stats.get("load") is not None:
            load = module.last_stats["load"].float()
            dropped.append(float(module.last_stats["dropped_fraction"]))
            imbalance.append(float(load.std() / (load.mean() + 1e-9)))
    if not dropped:
        return {}
    return {
        "moe/dropped_share": sum(dropped) / len(dropped),
        "moe/load_cv": sum(imbalance) / len(imbalance),
    }


def _atomic_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_pretraining(cfg: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Train one variant; returns the final metrics. Raises Preempted after a checkpoint."""
    out = Path(out_dir)
    ctx = init_distributed(cfg["pretrain"].get("device", "auto"))
    try:
        return _train(cfg, out, ctx)
    finally:
        cleanup_distributed()


def _train(cfg: Mapping[str, Any], out: Path, ctx: DistContext) -> dict[str, Any]:
    pre, variant = cfg["pretrain"], cfg["variant"]
    seed = int(pre["seed"])
    torch.manual_seed(seed)
    chash = config_hash(cfg)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_json(out / "config.json", cfg)

    specs = source_specs(pre)
    sets, sensors = open_sources(specs, Path(cfg["shards_root"]))
    dataset = MultiSourceDataset(sets, seed=seed)
    sampler = MultiSourceBatchSampler(
        dataset.sizes,
        {s.name: s.batch_size for s in specs},
        seed=seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    steps_per_epoch = sampler.steps_per_epoch
    if pre.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(pre["max_steps_per_epoch"]))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_multisource,
        num_workers=int(pre["num_workers"]),
        # A private generator: worker seeding must not consume the global RNG, whose state
        # (MoE gate noise) a resumed run restores from the checkpoint.
        generator=torch.Generator().manual_seed(seed),
        pin_memory=ctx.device.type == "cuda",
    )

    # Frozen, never wrapped in DDP, built before the model from its own seeded RNG.
    objective = variant.get("objective", "mim")
    teacher = teacher_for_variant(variant, seed)
    if teacher is not None:
        teacher.to(ctx.device)
    model = build_model(model_config(cfg, teacher.dim if teacher else None)).to(ctx.device)
    mask_generator = build_mask_generator(model.config)
    groups = param_groups(
        model,
        weight_decay=float(pre["weight_decay"]),
        lr_scale_by_prefix=sensor_lr_scales(specs, sensors),
    )
    base_lr = max(s.lr for s in specs)
    optimizer = build_optimizer(
        groups, lr=base_lr, betas=tuple(pre["betas"]), eps=float(pre["eps"])
    )
    epochs = int(variant["epochs"])
    scheduler = build_scheduler(
        optimizer,
        schedule=pre["schedule"],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=float(pre["warmup_epochs"]),
        warmup_lr=float(pre["warmup_lr"]),
        min_lr=float(pre["min_lr"]),
        milestones=pre.get("milestones", {}).get(str(epochs), []),
    )
    ckpt_dir = out / "checkpoints"
    resumed = load_checkpoint(
        ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler, config_hash=chash
    )
    position = resumed[0] if resumed else TrainPosition()
    if resumed:
        log.info("resuming at epoch %d step %d", position.epoch, position.step)
    train_model: torch.nn.Module = model
    if ctx.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    weights = loss_weights(specs)
    tracked = TrackedRun(
        uri=resolve_tracking_uri(cfg.get("tracking_uri"), cfg["results_root"]),
        experiment=cfg.get("experiment", "msgfm-pretrain"),
        run_name=variant["name"],
        state_dir=out,
        results_root=cfg["results_root"],
        tags={
            "variant": variant["name"],
            "table": str(variant.get("table", "")),
            "git_commit": git_commit(),
            "config_hash": chash,
            "moe": str(bool(variant["moe"])),
            "cross_rate": str(variant["cross_rate"]),
            "objective": objective,
            "teacher": str(variant.get("teacher")),
        },
        params=cfg,
        config_hash=chash,
        enabled=ctx.is_main,
    )
    amp = pre.get("amp", "bf16") == "bf16" and ctx.device.type == "cuda"
    log_every, ckpt_every = int(pre["log_every"]), int(pre["checkpoint_every"])
    total_steps = epochs * steps_per_epoch
    samples_per_step = sum(s.batch_size for s in specs) * ctx.world_size

    def checkpoint() -> None:
        if ctx.is_main:
            save_checkpoint(
                ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                position=position, config_hash=chash,
            )  # fmt: skip
        if ctx.distributed:
            torch.distributed.barrier()

    last: dict[str, float] = {}
    with PreemptionWatcher() as watcher:
        while position.epoch < epochs:
            sampler.set_epoch(position.epoch, start_step=position.step)
            dataset.set_epoch(position.epoch)
            window_start, window_steps = time.perf_counter(), 0
            for raw in loader:
                if position.step >= steps_per_epoch:
                    break
                entries, entry_weights = make_entries(
                    raw,
                    mask_generator=mask_generator,
                    cross_rate=float(variant["cross_rate"]),
                    seed=seed,
                    epoch=position.epoch,
                    weights=weights,
                    device=ctx.device,
                )
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                    if teacher is not None:
                        add_teacher_targets(
                            entries, teacher, objective, mask_generator.cells_per_side
                        )
                    loss, parts = train_model(entries, entry_weights)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at epoch {position.epoch} step "
                        f"{position.step}; components { ({k: float(v) for k, v in parts.items()}) }"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), pre["clip_grad"])
                optimizer.step()
                position.step += 1
                position.global_step += 1
                scheduler.step_update(position.global_step)
                window_steps += 1
                if position.global_step % log_every == 0 or position.global_step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    last = {k: float(all_reduce_mean(v.float(), ctx)) for k, v in parts.items()}
                    last.update(moe_metrics(model))
                    last["grad_norm"] = float(grad_norm)
                    last["lr"] = optimizer.param_groups[0]["lr"]
                    last["samples_per_s"] = window_steps * samples_per_step / max(elapsed, 1e-9)
                    tracked.log_metrics(last, step=position.global_step)
                    if ctx.is_main:
                        log.info(
                            "epoch %d step %d/%d loss %.4f %.1f samples/s",
                            position.epoch, position.step, steps_per_epoch,
                            last["loss"], last["samples_per_s"],
                        )  # fmt: skip
                    window_start, window_steps = time.perf_counter(), 0
                stop = broadcast_flag(watcher.triggered, ctx)
                if stop or position.global_step % ckpt_every == 0:
                    checkpoint()
                if stop:
                    tracked.finish("KILLED")
                    raise Preempted(
                        f"stopped by signal at epoch {position.epoch} step {position.step}; "
                        f"checkpoint in {ckpt_dir}"
                    )
            position.epoch += 1
            position.step = 0
            tracked.log_metrics({"epoch": position.epoch}, step=position.global_step)
        checkpoint()

    metrics = {"variant": variant["name"], "steps": position.global_step, **last}
    if ctx.is_main:
        _finish_outputs(cfg, out, model, dataset, mask_generator, tracked, metrics)
    return metrics


def _finish_outputs(
    cfg: Mapping[str, Any],
    out: Path,
    model: torch.nn.Module,
    dataset: MultiSourceDataset,
    mask_generator: Any,
    tracked: TrackedRun,
    metrics: dict[str, Any],
) -> None:
    """Figures, encoder and metrics; the encoder file is written last (the rule's output).

    A model that reconstructs teacher features (EVA-style) has no pixels to show: no figures.
    """
    figures = out / "figures"
    generator = torch.Generator().manual_seed(int(cfg["pretrain"]["seed"]))
    examples_by_key = (
        reconstruction_examples(
            model, dataset, mask_generator, generator, int(cfg["pretrain"]["figure_examples"])
        )
        if unwrap(model).target == "pixels"
        else {}
    )
    for key, examples in examples_by_key.items():
        path = save_reconstruction_figure(
            examples,
            figures / f"{key.replace('/', '_')}.png",
            title=f"{cfg['variant']['name']}: {key}",
        )
        tracked.log_artifact(path, "figures")
    _atomic_json(out / "metrics.json", metrics)
    tracked.log_artifact(out / "config.json")
    tracked.log_artifact(out / "metrics.json")
    encoder = out / "encoder.pt"
    tmp = encoder.with_name(".encoder.pt.tmp")
    torch.save({"config": unwrap(model).config, "model": unwrap(model).state_dict()}, tmp)
    os.replace(tmp, encoder)
    tracked.log_artifact(encoder)
    tracked.finish()
