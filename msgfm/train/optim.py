"""AdamW parameter groups and the per-iteration learning-rate schedule (timm's schedulers).

Two facts of the paper shape the groups:
- no weight decay where the model's ``no_weight_decay()`` says (one rule for every model:
  ``msgfm.model.msgfm.no_weight_decay``);
- per-source learning rates {RGB 1e-4, SEN12MS 0.25e-4, MDAS 1e-5} (paper Table 10), which
  the paper scales with each source's batch size. One optimiser cannot give the shared
  encoder three learning rates, so we apply them where they are unambiguous: modules used by
  one source only (the SAR/S2 embeddings and decoders, the DSM ones) train at that source's
  rate through a per-group ``lr_scale`` (which timm's schedulers honour), while the shared
  encoder runs at the base rate and sees each source's loss weighted by lr_source / lr_base
  (see ``msgfm.pretrain``). With Adam, a loss weight on a module that only one source touches
  would cancel out, which is why those modules get a learning rate instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from msgfm.train.speed import switch_on


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    lr_scale_by_prefix: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into (decay or not) × (lr_scale) groups.

    No decay on 1-D parameters and on the names in ``model.no_weight_decay()`` (timm's rule,
    ``param_groups_weight_decay``); ``lr_scale_by_prefix`` maps a parameter-name prefix (e.g.
    ``"embeds.sar."``) to a learning-rate multiplier; the longest matching prefix wins, others
    get 1.0. (Finetuning's layer decay is timm's ``param_groups_layer_decay``.)
    """
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    prefixes = sorted((lr_scale_by_prefix or {}).items(), key=lambda item: -len(item[0]))
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in no_decay
        scale = next((value for prefix, value in prefixes if name.startswith(prefix)), 1.0)
        group = groups.setdefault(
            (decay, scale),
            {"params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale},
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    groups: Iterable[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW as in paper Table 10. ``fused``: one kernel per step over all parameters instead
    of a dozen per tensor (CUDA's speed-up).

    Groups keep the unscaled ``lr``: the scheduler multiplies by ``lr_scale`` on every update
    (timm's convention), starting with the call in :func:`build_scheduler`.
    """
    return torch.optim.AdamW(list(groups), lr=lr, betas=betas, eps=eps, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    warmup_lr: float,
    min_lr: float = 0.0,
    milestones: Iterable[int] = (),
    decay_rate: float = 0.1,
) -> Any:
    """A timm scheduler stepped once per iteration (``scheduler.step_update(global_step)``).

    ``schedule``: "multistep" (paper: γ 0.1 at epoch 700 of 800; no milestone for 100 epochs)
    or "cosine" (GFM's finetuning). Warm-up is linear from ``warmup_lr``.
    """
    from timm.scheduler import create_scheduler_v2

    if schedule not in {"multistep", "cosine"}:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'multistep' or 'cosine'")
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=schedule,
        num_epochs=epochs,
        decay_milestones=list(milestones) or [epochs + 1],
        decay_rate=decay_rate,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_steps / max(steps_per_epoch, 1),
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    scheduler.step_update(0)  # apply warm-up start and lr_scale before the first step
    return scheduler


def build_optimization(
    groups: Iterable[dict[str, Any]],
    settings: Mapping[str, Any],
    *,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    milestones: Iterable[int] = (),
) -> tuple[torch.optim.AdamW, Any]:
    """AdamW and its per-iteration schedule from a job's settings (the config's ``pretrain`` or
    ``finetune`` block: betas, eps, schedule, warmup_epochs, warmup_lr, min_lr), so pretraining
    and finetuning read the same keys the same way. ``fused_adamw`` follows the parameters'
    device (``auto``: fused on CUDA, the per-tensor loop on CPU, as before)."""
    groups = list(groups)
    device = next(p.device for group in groups for p in group["params"])
    optimizer = build_optimizer(
        groups,
        lr=lr,
        betas=tuple(settings["betas"]),
        eps=float(settings["eps"]),
        fused=switch_on(settings.get("fused_adamw", "auto"), device),
    )
    scheduler = build_scheduler(
        optimizer,
        schedule=settings["schedule"],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=float(settings["warmup_epochs"]),
        warmup_lr=float(settings["warmup_lr"]),
        min_lr=float(settings["min_lr"]),
        milestones=milestones,
    )
    return optimizer, scheduler
