"""Per-sensor patch embeddings f_i (paper §3.1) and their stacked form for transfer (App. C.2).

Each sensor has its own stem because channel counts and value statistics differ (RGB 3, S2 13,
SAR 2, DSM 1). We use Swin's stem per sensor: a stride-4 ``Conv2d(C_i, C, 4, 4)`` followed by a
LayerNorm, producing the NHWC token grid timm's Swin stages expect. The paper's "convolution
layers, then patches" is satisfied by a single patchifying convolution, which keeps the shared
encoder identical to a standard Swin-B and checkpoints comparable with GFM.

Every stem first standardises its input per band with fixed statistics it stores as buffers
(``input_mean``/``input_std``: identity until :meth:`SensorPatchEmbed.set_input_statistics`;
pretraining sets them from its training shards, so they travel inside ``encoder.pt``). The
sensor normalisation of the data layer (S2 reflectance / 10000, SAR dB rescaled to [0, 1]) leaves
S2 with a spread of ~0.05 between images; at that scale AdamW's steps of ~lr per weight are as
large as the signal, and SimMIM on the demo stalled at the loss of a constant prediction
(masked L1 0.055 vs 0.030 with standardised bands, same steps). The MIM targets are standardised
by the target sensor's stem too (:class:`msgfm.model.msgfm.MsGFM`).

Missing bands (BigEarthNet has no B10) arrive zero-filled with a per-band validity mask. They are
set to zero *after* standardisation, i.e. to the band's mean (so a reader's fill value can never
leak in), and the valid bands are *not* rescaled: the gaps are systematic per dataset, not random
dropout, so inverted-dropout style rescaling would shift the statistics of the bands that are
present. ``rescale_missing=True`` switches to scaling by C / n_valid for experiments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class SensorPatchEmbed(nn.Module):
    """Image (B, C_i, H, W) → tokens (B, H/p, W/p, C), optionally with a band-validity mask."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int = 4,
        *,
        rescale_missing: bool = False,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.rescale_missing = rescale_missing
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.register_buffer("input_mean", torch.zeros(in_chans))
        self.register_buffer("input_std", torch.ones(in_chans))

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-band mean and spread of this sensor's (normalised) input; see the module doc."""
        mean, std = _checked_statistics(mean, std, self.in_chans)
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def standardize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised input → zero-mean, unit-spread bands (the MIM target too)."""
        return _standardize(image, self.input_mean, self.input_std)

    def unstandardize(self, image: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize`: a decoder's output back in the data's units."""
        return image * self.input_std[:, None, None] + self.input_mean[:, None, None]

    def forward(self, image: torch.Tensor, band_valid: torch.Tensor | None = None) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != self.in_chans:
            raise ValueError(
                f"expected an image (B, {self.in_chans}, H, W), got {tuple(image.shape)}"
            )
        if image.shape[2] % self.patch_size or image.shape[3] % self.patch_size:
            raise ValueError(
                f"image size {tuple(image.shape[2:])} is not a multiple of patch {self.patch_size}"
            )
        image = self.standardize(image)
        if band_valid is not None:
            image = self._apply_band_mask(image, band_valid)
        return self.norm(self.proj(image).permute(0, 2, 3, 1))

    def _apply_band_mask(self, image: torch.Tensor, band_valid: torch.Tensor) -> torch.Tensor:
        if band_valid.shape != (image.shape[0], self.in_chans):
            raise ValueError(
                f"band_valid must be (B, {self.in_chans}), got {tuple(band_valid.shape)}"
            )
        valid = band_valid.to(image.dtype)
        image = image * valid[:, :, None, None]
        if self.rescale_missing:
            scale = self.in_chans / valid.sum(dim=1).clamp_min(1.0)
            image = image * scale[:, None, None, None]
        return image


class StackedPatchEmbed(nn.Module):
    """One stem for the sensors' channels stacked in a fixed order (paper App. C.2, method 2).

    Built from pretrained per-sensor stems: the convolution weights are concatenated along the
    input channels and divided by the number of sensors, the biases averaged, so the stacked
    projection is exactly the *mean* of the per-sensor projections; the LayerNorm's affine
    parameters are the mean of the sensors' norms. A mean (not a sum) keeps the pre-norm
    activations at the scale each sensor's norm was trained on, and with one sensor the stacked
    stem is exactly that sensor's stem. Each sensor's input statistics are kept for its channels.
    """

    def __init__(self, embeds: Mapping[str, SensorPatchEmbed], sensors: Sequence[str]) -> None:
        super().__init__()
        if not sensors:
            raise ValueError("a stacked patch embedding needs at least one sensor")
        missing = [name for name in sensors if name not in embeds]
        if missing:
            raise KeyError(f"no patch embedding for sensors {missing}; have {sorted(embeds)}")
        parts = [embeds[name] for name in sensors]
        if len({(p.embed_dim, p.patch_size) for p in parts}) != 1:
            raise ValueError(f"sensors {list(sensors)} have different embed dims or patch sizes")
        self.sensors = tuple(sensors)
        self.channels = tuple(p.in_chans for p in parts)
        self.patch_size = parts[0].patch_size
        embed_dim = parts[0].embed_dim
        count = float(len(parts))
        self.proj = nn.Conv2d(sum(self.channels), embed_dim, self.patch_size, self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([p.proj.weight for p in parts], dim=1) / count)
            self.proj.bias.copy_(torch.stack([p.proj.bias for p in parts]).mean(0))
            self.norm.weight.copy_(torch.stack([p.norm.weight for p in parts]).mean(0))
            self.norm.bias.copy_(torch.stack([p.norm.bias for p in parts]).mean(0))
        self.register_buffer("input_mean", torch.cat([p.input_mean for p in parts]).clone())
        self.register_buffer("input_std", torch.cat([p.input_std for p in parts]).clone())

    def forward(self, image: torch.Tensor, band_valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, ΣC_i, H, W) with channels in ``self.sensors`` order → (B, H/p, W/p, C);
        ``band_valid`` (B, ΣC_i) zeroes missing bands after standardisation (their mean)."""
        if image.ndim != 4 or image.shape[1] != sum(self.channels):
            raise ValueError(
                f"expected (B, {sum(self.channels)}, H, W) = channels of {list(self.sensors)} "
                f"stacked, got {tuple(image.shape)}"
            )
        image = _standardize(image, self.input_mean, self.input_std)
        if band_valid is not None:
            if band_valid.shape != (image.shape[0], image.shape[1]):
                raise ValueError(
                    f"band_valid must be (B, {image.shape[1]}), got {tuple(band_valid.shape)}"
                )
            image = image * band_valid.to(image.dtype)[:, :, None, None]
        return self.norm(self.proj(image).permute(0, 2, 3, 1))


def _checked_statistics(
    mean: torch.Tensor, std: torch.Tensor, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float tensors of shape (channels,); a band without spread (a constant or zero-filled
    band) gets std 1 so it stays finite instead of exploding."""
    mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"input statistics must have {channels} values each, got mean {tuple(mean.shape)} "
            f"and std {tuple(std.shape)}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
        raise ValueError(f"input statistics must be finite with std >= 0: {mean}, {std}")
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def _standardize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (image - mean[:, None, None].to(image.dtype)) / std[:, None, None].to(image.dtype)
