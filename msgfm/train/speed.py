"""GPU speed switches of a training job: TF32 matmuls, torch.compile, activation checkpointing.

Each switch reads ``auto`` (on where it pays: CUDA), ``true`` or ``false`` from the job's
config block. ``auto`` leaves CPU runs untouched, which keeps them eager, fp32 and bitwise
resumable; ``true`` forces a switch on CPU too, which is how the tests prove it is honoured.
torch.compile is an optimisation, never a reason for a job to fail: when it raises (at
``torch.compile`` or at the first compiled call) the job logs why in one line and runs eager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

Switch = bool | str  # "auto", true or false


def switch_on(setting: Switch, device: torch.device) -> bool:
    """Whether a switch is on for this device: ``auto`` means on CUDA only."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"switch {setting!r}: expected auto, true or false")


def set_tf32(setting: Switch, device: torch.device) -> bool:
    """Let CUDA matmuls and convolutions run fp32 work in TF32 (what autocast leaves in fp32:
    the loss, norms' statistics). Returns whether it is on."""
    enabled = switch_on(setting, device)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return enabled


def set_activation_checkpointing(model: nn.Module, setting: bool | Sequence[bool]) -> None:
    """Recompute the Swin blocks of the chosen stages in the backward pass (timm's per-stage
    ``grad_checkpointing``): one flag for every stage or one per stage. Same loss and
    gradients, less activation memory, about a third more compute for those stages."""
    from msgfm.model.encoder import SwinEncoder

    for module in model.modules():
        if isinstance(module, SwinEncoder):
            module.set_grad_checkpointing(setting)


class EagerFallback(nn.Module):
    """Calls the compiled module; if a call raises (tracing, a recompilation, inductor), logs
    why, reruns it eager and stays eager. A real error in the model raises again from eager.

    The eager module is the registered child, so parameters and ``train()``/``eval()`` are
    those of the real model; the compiled wrapper shares them and is kept out of the tree.
    """

    def __init__(self, module: nn.Module, compiled: Any) -> None:
        super().__init__()
        self.module = module
        self._compiled: Any = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # dynamo/inductor raise many types; eager is always correct
            log.warning("torch.compile failed, running eager: %s", _one_line(exc))
            self._compiled = None
            return self.module(*args, **kwargs)


def compile_model(module: nn.Module, setting: Switch, device: torch.device) -> nn.Module:
    """``torch.compile`` of what the step calls (the DDP wrapper where there is one, so DDP's
    bucketing splits the graph), with a fallback to eager on any failure."""
    if not switch_on(setting, device):
        return module
    try:
        compiled = torch.compile(module)
    except Exception as exc:
        log.warning("torch.compile failed, running eager: %s", _one_line(exc))
        return module
    return EagerFallback(module, compiled)


def prepare_model(
    settings: Mapping[str, Any], device: torch.device, model: nn.Module, train_model: nn.Module
) -> nn.Module:
    """Apply a job's ``tf32``, ``activation_checkpointing`` and ``compile`` settings; returns
    the module the step should call."""
    set_tf32(settings.get("tf32", "auto"), device)
    set_activation_checkpointing(model, settings.get("activation_checkpointing", False))
    return compile_model(train_model, settings.get("compile", "auto"), device)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__
