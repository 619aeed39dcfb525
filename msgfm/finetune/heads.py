"""Task heads on the encoder's features (paper §4.2).

- ``ClassificationHead``: global average pooling + linear, over the final (normed) feature
  map; with transfer method 1 the per-sensor maps are concatenated first, so ``in_dim`` is
  the sum of their widths.
- ``RegressionDecoder``: an FPN-style top-down path over the per-stage maps (stride 4…32),
  then ×2 upsampling steps (bilinear + 3×3 conv) to ``out_scale`` × the encoder input, an
  optional resize to an explicit output size, and an optional full-resolution *guide* image
  concatenated before the last convolutions: pan-sharpening feeds the 650 px PAN band there,
  so the high-resolution detail reaches the output without passing through a 32× bottleneck.
  Its output bias starts at the logit of the training targets' band means
  (``init_bias_to_mean``), as the classifier's starts at the label prior.
- ``UperNetHead`` (Xiao et al. 2018, as mmsegmentation's UPerHead that GFM uses for
  Vaihingen): a pyramid pooling module (scales 1, 2, 3, 6) on the last stage, an FPN over all
  stages, the fused stride-4 map through a 3×3 conv, dropout 0.1, 1×1 classifier; logits are
  resized to the requested output size.

The encoder's per-stage maps carry no norm (``SwinEncoder.forward_features``), so the dense
heads open with one LayerNorm per stage, as Swin's segmentation backbones add. Conv blocks use
GroupNorm rather than UperNet's (Sync)BatchNorm: it does not depend on the batch size (the
1×1 pooling branch of a BatchNorm PPM fails on a batch of one, which the last batch of a
small subset can be) and needs no synchronisation under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


def _groups(channels: int) -> int:
    """Up to 32 groups with at least two channels each (a 1×1 pooled map still normalises)."""
    return math.gcd(32, max(channels // 2, 1))


class ConvNormAct(nn.Sequential):
    """k×k conv (no bias) → GroupNorm → GELU."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(_groups(out_chans), out_chans),
            nn.GELU(),
        )


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ClassificationHead(nn.Module):
    """(B, C, h, w) feature map → GAP → Linear → (B, num_classes) logits."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean(dim=(2, 3))))

    def init_bias_to_prior(self, positives: torch.Tensor, total: int) -> None:
        """Start each class's logit at the training set's label frequency (log-odds).

        With a zero bias every class starts at p = 0.5 and the head must first learn the
        label prior through its bias, one AdamW step of ~lr at a time: thousands of steps,
        more than a small subset gets (1 % or 10 % of the demo is a few dozen steps). Until
        then the scores of absent classes swamp the micro-averaged precision, whatever the
        backbone. Starting at the prior (Lin et al. 2017, RetinaNet) leaves the steps to the
        features. Frequencies are smoothed, (k + 0.5) / (n + 1), so a class never seen in
        the subset starts low but finite.
        """
        if positives.shape != self.fc.bias.shape:
            raise ValueError(
                f"{tuple(positives.shape)} label counts for a {self.fc.out_features}-class head"
            )
        frequency = (positives.double() + 0.5) / (total + 1.0)
        with torch.no_grad():
            self.fc.bias.copy_(torch.logit(frequency).to(self.fc.bias.dtype))


def _check_stages(features: Sequence[torch.Tensor], dims: Sequence[int]) -> None:
    got = [f.shape[1] for f in features]
    if got != list(dims):
        raise ValueError(f"expected stage features with channels {list(dims)}, got {got}")


class _TopDown(nn.Module):
    """Per-stage norms, lateral 1×1 convs and FPN top-down fusion (shared by both heads)."""

    def __init__(self, stage_dims: Sequence[int], channels: int, *, last_lateral: bool) -> None:
        super().__init__()
        self.stage_dims = list(stage_dims)
        self.norms = nn.ModuleList(ChannelLayerNorm(d) for d in stage_dims)
        count = len(stage_dims) if last_lateral else len(stage_dims) - 1
        self.laterals = nn.ModuleList(
            ConvNormAct(d, channels, kernel_size=1) for d in stage_dims[:count]
        )
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels) for _ in stage_dims[:-1])

    def normed(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        _check_stages(features, self.stage_dims)
        return [norm(f) for norm, f in zip(self.norms, features, strict=True)]

    def fuse(self, top: torch.Tensor, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Top-down: each finer level = its lateral + the upsampled coarser level, smoothed.
        Returns the fused maps finest first, ``top`` last (unsmoothed, as in FPN)."""
        outputs = [top]
        x = top
        for i in range(len(features) - 2, -1, -1):
            lateral = self.laterals[i](features[i])
            x = lateral + F.interpolate(
                x, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.insert(0, self.smooth[i](x))
        return outputs


class RegressionDecoder(nn.Module):
    """Per-stage maps → image of ``out_chans`` at ``out_scale`` × the encoder input size.

    ``stride`` is the encoder's total stride (32); the finest stage sits at
    ``stride / 2**(stages-1)`` and is upsampled by ×2 steps, halving the width each step
    (down to 16 channels) to keep full-resolution convolutions cheap.
    """

    def __init__(
        self,
        stage_dims: Sequence[int],
        out_chans: int,
        stride: int = 32,
        out_scale: int = 1,
        *,
        channels: int = 128,
        guide_chans: int = 0,
    ) -> None:
        super().__init__()
        finest = stride // 2 ** (len(stage_dims) - 1)
        factor = finest * out_scale
        if factor < 1 or factor & (factor - 1):
            raise ValueError(
                f"stride {stride} over {len(stage_dims)} stages × out_scale {out_scale} must "
                "leave a power-of-two upsampling factor"
            )
        self.top_down = _TopDown(stage_dims, channels, last_lateral=True)
        steps, width = [], channels
        for _ in range(int(math.log2(factor))):
            steps.append(ConvNormAct(width, max(width // 2, 16)))
            width = max(width // 2, 16)
        self.up_steps = nn.ModuleList(steps)
        self.guide_chans = guide_chans
        self.fuse_guide = ConvNormAct(width + guide_chans, width) if guide_chans else None
        self.out = nn.Conv2d(width, out_chans, kernel_size=3, padding=1)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        out_size: tuple[int, int] | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        normed = self.top_down.normed(features)
        x = self.top_down.fuse(self.top_down.laterals[-1](normed[-1]), normed)[0]
        for step in self.up_steps:
            x = step(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        if self.fuse_guide is not None:
            if guide is None or guide.shape[1] != self.guide_chans:
                raise ValueError(f"this decoder needs a guide image with {self.guide_chans} ch")
            if guide.shape[-2:] != x.shape[-2:]:
                guide = F.interpolate(
                    guide, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True
                )
            x = self.fuse_guide(torch.cat([x, guide.to(x.dtype)], dim=1))
        elif guide is not None:
            raise ValueError("a guide image was given but the decoder has guide_chans=0")
        return self.out(x)

    def init_bias_to_mean(self, mean: torch.Tensor) -> None:
        """Start each band's output at the training targets' mean (through the sigmoid the
        model puts on this output: the bias is its logit).

        With a zero bias every band starts at 0.5 while reflectances and 11-bit DNs scaled to
        [0, 1] sit near 0.1-0.3: the decoder's first hundreds of steps would only learn the
        mean, and a short schedule ends worse than predicting it (the regression twin of
        ``ClassificationHead.init_bias_to_prior``). Means are clipped to [1e-3, 1 - 1e-3] so
        a band that is always 0 (SEN12MS-CR's cirrus B10) gets a finite logit.
        """
        if mean.shape != self.out.bias.shape:
            raise ValueError(
                f"{tuple(mean.shape)} band means for a {self.out.out_channels}-band decoder"
            )
        with torch.no_grad():
            self.out.bias.copy_(torch.logit(mean.double().clamp(1e-3, 1 - 1e-3)).float())


class PyramidPooling(nn.Module):
    """PSPNet's pooling module: pooled context at several scales, concatenated and fused."""

    def __init__(self, in_dim: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(ConvNormAct(in_dim, channels, 1) for _ in self.scales)
        self.bottleneck = ConvNormAct(in_dim + len(self.scales) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            F.interpolate(
                branch(F.adaptive_avg_pool2d(x, scale)),
                size=x.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            for scale, branch in zip(self.scales, self.branches, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """UperNet decode head over per-stage maps → (B, num_classes, H, W) logits."""

    def __init__(
        self,
        stage_dims: Sequence[int],
        num_classes: int,
        channels: int = 512,
        *,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.top_down = _TopDown(stage_dims, channels, last_lateral=False)
        self.ppm = PyramidPooling(stage_dims[-1], channels, pool_scales)
        self.fpn_bottleneck = ConvNormAct(len(stage_dims) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(
        self, features: Sequence[torch.Tensor], out_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        normed = self.top_down.normed(features)
        levels = self.top_down.fuse(self.ppm(normed[-1]), normed)
        size = levels[0].shape[-2:]
        stacked = torch.cat(
            [levels[0]]
            + [
                F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                for x in levels[1:]
            ],
            dim=1,
        )
        logits = self.classifier(self.dropout(self.fpn_bottleneck(stacked)))
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits
