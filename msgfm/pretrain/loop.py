"""The msGFM pretraining job: one variant (a Table 5/6 row or the 800-epoch model) end to end.

What a job guarantees, because a cluster will interrupt it:
- it resumes from ``<out>/checkpoints/last.pt`` exactly (position-seeded masks, cross draws,
  data order and flips; saved RNG states for the MoE gate noise), and continues its MLflow run;
- SIGTERM/SIGINT/SIGURG (preemption, Ctrl-C, time limit) → checkpoint after the step → exit 75;
- only rank 0 writes files or talks to MLflow; every rank sees the same stop decision.
Outputs: ``encoder.pt`` ({"config", "model"} loadable by ``msgfm.model.factory.load_encoder``),
``metrics.json``, ``config.json`` (the resolved config) and one reconstruction figure per
pretraining entry (none when the model reconstructs teacher features).
A variant may read only some sources and sensors (``sources``, ``sensors``: Fig. 4's SAR-only
and S2-only runs); the model still has every configured sensor's stem and decoder, and those
never fed keep their seeded initial weights (AdamW skips parameters without gradients), so a
downstream task can use the encoder with a sensor it was not pretrained on, from an untrained stem.
A Table 5 variant also builds a frozen teacher (msgfm.pretrain.teachers) whose targets are
computed per step under no_grad; it is never wrapped in DDP nor checkpointed (it is rebuilt
identically: hub weights, or a seeded random model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from msgfm.data.loader import (
    MultiSourceBatchSampler,
    MultiSourceDataset,
    collate_multisource,
    to_tensor,
)
from msgfm.data.shards import ShardSet
from msgfm.data.statistics import role_statistics
from msgfm.files import atomic_path
from msgfm.model.factory import build_mask_generator, build_model
from msgfm.plan import ablation_tags, variant_model, variant_sources
from msgfm.pretrain.batches import (
    SampleDraws,
    SourceSpec,
    loss_weights,
    make_entries,
    sensor_lr_scales,
    sensor_roles,
)
from msgfm.pretrain.figures import save_reconstruction_figure
from msgfm.pretrain.reconstruct import reconstruction_examples
from msgfm.pretrain.teachers import add_teacher_targets, model_overrides, teacher_for_variant
from msgfm.tracked_run import TrackedRun
from msgfm.train.checkpoint import TrainPosition, unwrap
from msgfm.train.job import Job, open_tracked_run, resumed_trainer, run_job, write_metrics
from msgfm.train.optim import build_optimization, param_groups
from msgfm.train.runner import make_loader


def source_specs(
    pretrain: Mapping[str, Any], variant: Mapping[str, Any] | None = None
) -> list[SourceSpec]:
    """The ``pretrain.sources`` a variant reads (msgfm.plan.variant_sources: all, or those its
    ``sources`` names), as the batch sampler and optimiser take them."""
    names = variant_sources(pretrain["sources"], variant or {})
    return [
        SourceSpec(name, tuple(spec["datasets"]), int(spec["batch_size"]), float(spec["lr"]))
        for name, spec in pretrain["sources"].items()
        if name in names
    ]


def model_config(cfg: Mapping[str, Any], teacher_dim: int | None = None) -> dict[str, Any]:
    """The model config of a variant: the shared model settings with its MoE switch and, for
    a Table 5 objective, the distillation head or feature decoders sized to its teacher."""
    model = variant_model(cfg["model"], cfg["variant"])
    overrides = model_overrides(cfg["variant"].get("objective", "mim"), teacher_dim)
    for key, values in overrides.items():
        model.setdefault(key, {}).update(values)
    return model


def open_sources(
    specs: list[SourceSpec], shards_root: Path, sensors: Sequence[str] | None = None
) -> tuple[dict[str, list[ShardSet]], dict[str, list[str]]]:
    """The shard sets of every source and the sensors read from each: all the set holds, or
    only ``sensors`` (a variant's restriction). A paired source cut to one sensor becomes an
    unpaired one: its images reconstruct themselves (Eq. 2)."""
    sets = {s.name: [ShardSet(shards_root / d) for d in s.datasets] for s in specs}
    read: dict[str, list[str]] = {}
    for name, group in sets.items():
        held = sensor_roles(group[0].roles)
        read[name] = [sensor for sensor in held if sensors is None or sensor in sensors]
        if not read[name]:
            raise ValueError(
                f"source {name!r} ({group[0].path}) holds sensors {held}, none of the variant's "
                f"{list(sensors or [])}: leave it out of the variant's sources"
            )
    missing = sorted(set(sensors or []) - {s for group in read.values() for s in group})
    if missing:
        raise ValueError(f"variant sensors {missing} are in none of the sources {sorted(sets)}")
    return sets, read


def measure_input_statistics(
    model: torch.nn.Module, sets: Mapping[str, list[ShardSet]], read: Mapping[str, list[str]]
) -> None:
    """Each stem's per-band statistics from every source that feeds its sensor; a stem no
    source feeds (a single-sensor variant's others) keeps the identity."""
    for sensor, stem in model.embeds.items():
        feeding = [one for name, group in sets.items() if sensor in read[name] for one in group]
        if feeding:
            stem.set_input_statistics(*role_statistics(feeding, sensor, to_tensor))


def moe_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Dropped-token share and expert-load imbalance (cv) averaged over the MoE blocks."""
    dropped, imbalance = [], []
    for module in unwrap(model).encoder.moe_layers():
        if module.last_stats.get("load") is not None:
            load = module.last_stats["load"].float()
            dropped.append(float(module.last_stats["dropped_fraction"]))
            imbalance.append(float(load.std() / (load.mean() + 1e-9)))
    if not dropped:
        return {}
    return {
        "moe/dropped_share": sum(dropped) / len(dropped),
        "moe/load_cv": sum(imbalance) / len(imbalance),
    }


def run_pretraining(cfg: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Train one variant; returns the final metrics. Raises Preempted after a checkpoint."""
    return run_job(
        cfg, out_dir, stage="pretrain", seed=int(cfg["pretrain"]["seed"]), train=_pretrain
    )


def _pretrain(job: Job) -> dict[str, Any]:
    variant, ctx = job.cfg["variant"], job.ctx
    specs = source_specs(job.settings, variant)
    sets, sensors = open_sources(specs, Path(job.cfg["shards_root"]), variant.get("sensors"))

    # Frozen, never wrapped in DDP, built before the model from its own seeded RNG.
    objective = variant.get("objective", "mim")
    teacher = teacher_for_variant(variant, job.seed)
    if teacher is not None:
        teacher.to(ctx.device)
    model = build_model(model_config(job.cfg, teacher.dim if teacher else None))
    measure_input_statistics(model, sets, sensors)
    model.to(ctx.device)
    mask_generator = build_mask_generator(model.config)

    dataset, loader, steps_per_epoch = _data(job, specs, sets, sensors, mask_generator)
    epochs = int(variant["epochs"])
    optimizer, scheduler = _optimization(job, model, specs, sensors, epochs, steps_per_epoch)
    tracked = open_tracked_run(
        job, run_name=variant["name"], tags={"variant": variant["name"], **ablation_tags(variant)},
        entry_point="python -m msgfm pretrain",
    )  # fmt: skip
    tracked.log_shard_sets(one for group in sets.values() for one in group)
    trainer = resumed_trainer(
        job, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
        tracked=tracked, epochs=epochs, steps_per_epoch=steps_per_epoch,
        extra_metrics=lambda: moe_metrics(model),
    )  # fmt: skip
    weights = loss_weights(specs)

    def step(raw: Any, position: TrainPosition) -> tuple[torch.Tensor, dict[str, Any], int]:
        entries, entry_weights = make_entries(raw, weights=weights, device=ctx.device)
        with trainer.precision.autocast():
            if teacher is not None:
                add_teacher_targets(entries, teacher, objective, mask_generator.cells_per_side)
            loss, parts = trainer.train_model(entries, entry_weights)
        return loss, parts, sum(len(e["image"]) for e in entries.values())

    last = trainer.run(step)
    metrics = {"variant": variant["name"], "steps": trainer.position.global_step, **last}
    if ctx.is_main:
        _finish_outputs(job, model, dataset, mask_generator, tracked, metrics)
    return metrics


def _data(
    job: Job,
    specs: list[SourceSpec],
    sets: Mapping[str, list[ShardSet]],
    sensors: Mapping[str, list[str]],
    mask_generator: Any,
) -> tuple[MultiSourceDataset, DataLoader, int]:
    """The variant's samples with their seeded masks and cross draws, this rank's share of
    the multi-source batches, and the steps of an epoch."""
    seed, ctx = job.seed, job.ctx
    draws = SampleDraws(mask_generator, float(job.cfg["variant"]["cross_rate"]), seed)
    dataset = MultiSourceDataset(sets, seed=seed, roles=sensors, draws=draws)
    sampler = MultiSourceBatchSampler(
        dataset.sizes,
        {s.name: s.batch_size for s in specs},
        seed=seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    loader = make_loader(
        dataset, sampler, collate_multisource, workers=int(job.settings["num_workers"]),
        seed=seed, ctx=ctx, persistent=True,
    )  # fmt: skip
    return dataset, loader, job.steps_per_epoch(sampler.steps_per_epoch)


def _optimization(
    job: Job,
    model: torch.nn.Module,
    specs: list[SourceSpec],
    sensors: Mapping[str, list[str]],
    epochs: int,
    steps_per_epoch: int,
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW at the fastest source's learning rate, each sensor's modules scaled to its
    source's, with the schedule (and, for the epoch count, the milestones) of the settings."""
    pre = job.settings
    groups = param_groups(
        model,
        weight_decay=float(pre["weight_decay"]),
        lr_scale_by_prefix=sensor_lr_scales(specs, sensors),
    )
    return build_optimization(
        groups,
        pre,
        lr=max(s.lr for s in specs),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        milestones=pre.get("milestones", {}).get(str(epochs), []),
    )


def _finish_outputs(
    job: Job,
    model: torch.nn.Module,
    dataset: MultiSourceDataset,
    mask_generator: Any,
    tracked: TrackedRun,
    metrics: dict[str, Any],
) -> None:
    """Figures, metrics and encoder; the encoder file is written last (the rule's output),
    then logged as an MLflow model (:mod:`msgfm.model_registry`).

    A model that reconstructs teacher features (EVA-style) has no pixels to show: no figures.
    """
    cfg, out = job.cfg, job.out
    figures = out / "figures"
    generator = torch.Generator().manual_seed(job.seed)
    examples_by_key = (
        reconstruction_examples(
            model, dataset, mask_generator, generator, int(job.settings["figure_examples"])
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
    write_metrics(job, tracked, metrics)
    encoder = out / "encoder.pt"
    with atomic_path(encoder) as tmp:
        torch.save({"config": unwrap(model).config, "model": unwrap(model).state_dict()}, tmp)
    if tracked.enabled:  # the encoder as the run's model; the Table 3 one also registered
        from msgfm.model_registry import log_encoder_model

        tracked.flush()
        table3 = str(cfg["variant"].get("table")) == "3"
        log_encoder_model(tracked.uri, tracked.run_id, encoder, register=table3)
    tracked.finish()
