"""Per-sensor SimMIM decoders D_i: the lightest possible head, so the encoder does the work.

A 1×1 convolution predicts, for every final-stage token, the 32×32×C_i pixels it covers, and a
PixelShuffle lays them out at full resolution (SimMIM). One decoder per sensor because the
targets have different channel counts; a cross-sensor target uses the partner's decoder D_j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelDecoder(nn.Module):
    """Features (B, C_enc, H/s, W/s) → image (B, C_out, H, W) with s the encoder stride."""

    def __init__(self, in_dim: int, out_chans: int, stride: int = 32) -> None:
        super().__init__()
        self.out_chans = out_chans
        self.stride = stride
        self.proj = nn.Conv2d(in_dim, stride**2 * out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.proj(features))

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode final-stage tokens (n, C_enc) → their pixel patches (n, C_out, s, s).

        The same weights as ``forward`` on a flat list of tokens, so the pretraining loss can
        weigh each token's patch by its mask (msgfm.model.msgfm).
        PixelShuffle sends channel c·s² + i·s + j to pixel (i, j) of channel c, hence the view.
        """
        weight = self.proj.weight.view(self.proj.out_channels, -1)
        out = F.linear(tokens, weight, self.proj.bias)
        return out.view(-1, self.out_chans, self.stride, self.stride)
