"""Mixed precision of a training job: the autocast dtype and, for fp16, the gradient scaler.

bf16 needs no loss scaling, but the paper's V100s have no bf16: there fp16 autocast runs with
``torch.amp.GradScaler``, whose scale and growth tracker decide which later steps are skipped.
That state is part of the optimisation, so the trainer checkpoints it beside the optimiser
(``state_dict``/``load_state_dict``) and a resumed fp16 run scales exactly as the interrupted
one would have. Without fp16 the scaler is disabled and every call below is the plain
``loss.backward()`` / clip / ``optimizer.step()``, so CPU runs stay fp32 and bitwise resumable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


class Precision:
    """Autocast plus loss scaling for one device type; ``dtype`` None means fp32 throughout."""

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype | None = None) -> None:
        self.device_type = device_type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's autocast region (a no-op without a dtype)."""
        return torch.autocast(
            self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the (scaled, under fp16) loss."""
        self.scaler.scale(loss).backward()

    def clip_and_step(
        self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], max_norm: float
    ) -> torch.Tensor:
        """Unscale, clip to ``max_norm``, step (skipped by the scaler on inf/nan gradients) and
        update the scale; returns the unscaled gradient norm before clipping."""
        self.scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return grad_norm

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state ({} when no scaling is done)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)


def job_precision(amp: str, device: torch.device) -> Precision:
    """A job's precision from its ``amp`` setting: mixed precision on CUDA only (CPU runs stay
    fp32). bf16 on a GPU without it (V100) is refused with the setting that works there."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp {amp!r} unknown; expected one of {sorted(AMP_DTYPES)}")
    if device.type != "cuda":
        return Precision(device.type)
    dtype = AMP_DTYPES[amp]
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"amp: bf16 but {torch.cuda.get_device_name(device)} has no bf16; set amp: fp16"
        )
    return Precision(device.type, dtype)
