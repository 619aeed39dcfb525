"""SimMIM masking: which patch tokens are hidden, and how the mask reaches tokens and pixels.

The mask is drawn on a coarse grid of ``mask_patch_size`` cells (32 px in the paper) and then
repeated to the encoder's token grid (4 px patches), so a hidden cell hides a whole 8×8 block of
tokens: small hidden areas would be trivially in-painted from their neighbours. One mask per
image, shared by all its channels (paper App. B.1); the two images of a pair get independent
draws because each draw consumes the generator afresh.
"""

from __future__ import annotations

import math

import torch


class MaskGenerator:
    """Draw SimMIM token masks: ``ceil(cells · ratio)`` of the coarse cells are hidden.

    Deterministic given the ``torch.Generator`` passed to ``__call__``, which is why the
    generator is an argument rather than global state: data workers seed their own.
    """

    def __init__(
        self,
        input_size: int,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
    ) -> None:
        if input_size % mask_patch_size != 0:
            raise ValueError(
                f"input_size {input_size} must be a multiple of mask_patch_size {mask_patch_size}"
            )
        if mask_patch_size % model_patch_size != 0:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} must be a multiple of "
                f"model_patch_size {model_patch_size}"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.cells_per_side = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.num_cells = self.cells_per_side**2
        self.num_masked = math.ceil(self.num_cells * mask_ratio)

    @property
    def token_grid(self) -> int:
        """Side of the token mask: input_size / model_patch_size."""
        return self.cells_per_side * self.scale

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One (H/p, W/p) bool token mask, True where the token is hidden."""
        order = torch.randperm(self.num_cells, generator=generator)
        cells = torch.zeros(self.num_cells, dtype=torch.bool)
        cells[order[: self.num_masked]] = True
        grid = cells.view(self.cells_per_side, self.cells_per_side)
        return grid.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, H/p, W/p) masks, one independent draw per image."""
        return torch.stack([self(generator) for _ in range(batch_size)])


def apply_mask_token(
    tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """Replace hidden tokens of NHWC ``tokens`` (B, h, w, C) by the learned ``mask_token`` (C,).

    A blend ``x·(1−m) + t·m`` rather than indexing, so the gradient reaches the token from
    every hidden position and visible tokens pass through untouched.
    """
    if mask.shape != tokens.shape[:3]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the token grid "
            f"{tuple(tokens.shape[:3])} (expected (B, H/patch, W/patch))"
        )
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return tokens * (1.0 - weight) + mask_token.to(tokens.dtype) * weight


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Token mask (B, h, w) → pixel mask (B, 1, h·p, w·p) as float, for the masked L1."""
    return (
        mask.to(torch.float32)
        .repeat_interleave(patch_size, 1)
        .repeat_interleave(patch_size, 2)
        .unsqueeze(1)
    )
