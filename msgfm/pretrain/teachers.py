"""Frozen teachers of the Table 5 variants: what they see and which features they give.

Paper §4.4 compares msGFM's from-scratch pretraining with three teacher-guided variants:

- ``distill`` (GFM): the student's pooled stage-3 map, through a linear head, is pulled
  towards the teacher's **pooled embedding** of the unmasked image (cosine, α = 1);
- ``feature_recon`` (EVA): the decoders predict the teacher's **patch features** of the masked
  cells instead of their pixels.

The teachers are timm models built by name: ``swin_base_patch4_window7_224.ms_in22k`` (GFM's
ImageNet-22k Swin-B) and ``vit_base_patch16_clip_224.openai`` (our choice of CLIP image encoder:
OpenAI's ViT-B/16, the CLIP model timm ships with the weights' own normalisation). Both are
built with ``num_classes=0``, so the pooled embedding is timm's pre-logits feature: the final-
normed, pooled representation that a classifier (IN-22k) or CLIP's image projection reads
(768-d for CLIP; its 512-d projection is a fixed linear map of it, and the student's head is
itself linear). Patch features are ``forward_features`` without prefix tokens.

Teachers take 3-channel natural images; each sensor is rendered into one (``render_rgb``), then
resized to the teacher's input size and normalised with the teacher's own mean/std.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.data.sensors import RGB_MEAN, RGB_STD, S2_BANDS, SAR_DB_RANGE

OBJECTIVES = ("mim", "distill", "feature_recon")
# Sentinel Hub's true-colour gain: reflectance 0.4 is already white; natural scenes sit at 0.02–0.3.
S2_TRUE_COLOUR_GAIN = 2.5
S2_TRUE_COLOUR = ("B04", "B03", "B02")
# VV − VH in dB (the cross-polarisation ratio) lies mostly in 0–15 dB over land.
SAR_RATIO_DB_RANGE = (0.0, 15.0)
# Per-tile standardised heights: ±2 standard deviations span black to white.
DSM_SIGMAS = 2.0


def render_rgb(image: torch.Tensor, sensor: str) -> torch.Tensor:
    """A (B, C, H, W) model input of ``sensor`` → a (B, 3, H, W) natural-looking image in [0, 1].

    - rgb: the ImageNet normalisation undone;
    - s2: true colour B04, B03, B02 (reflectance in [0, 1]) brightened by 2.5;
    - sar: the usual false-colour composite VV, VH, VV − VH (inputs are dB rescaled from
      [-25, 0] to [0, 1]; the ratio is rescaled from 0–15 dB);
    - dsm: per-tile standardised heights from −2σ to +2σ, replicated to three channels.
    """
    expected = {"rgb": 3, "s2": len(S2_BANDS), "sar": 2, "dsm": 1}
    if sensor not in expected:
        raise KeyError(f"no teacher rendering for sensor {sensor!r}; expected {sorted(expected)}")
    if image.ndim != 4 or image.shape[1] != expected[sensor]:
        raise ValueError(
            f"{sensor} image must be (B, {expected[sensor]}, H, W), got {tuple(image.shape)}"
        )
    x = image.float()
    if sensor == "rgb":
        mean = x.new_tensor(RGB_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(RGB_STD).view(1, 3, 1, 1)
        rgb = x * std + mean
    elif sensor == "s2":
        bands = [S2_BANDS.index(band) for band in S2_TRUE_COLOUR]
        rgb = x[:, bands] * S2_TRUE_COLOUR_GAIN
    elif sensor == "sar":
        span = SAR_DB_RANGE[1] - SAR_DB_RANGE[0]
        low, high = SAR_RATIO_DB_RANGE
        ratio = ((x[:, :1] - x[:, 1:2]) * span - low) / (high - low)
        rgb = torch.cat([x, ratio], dim=1)
    else:
        rgb = ((x + DSM_SIGMAS) / (2 * DSM_SIGMAS)).expand(-1, 3, -1, -1)
    return rgb.clamp(0.0, 1.0)


class Teacher(nn.Module):
    """A frozen timm model with its input pipeline: always in eval mode, never a gradient."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean", tuple(RGB_MEAN)), cfg.get("std", tuple(RGB_STD))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # The built model's own size: pretrained_cfg keeps 224 even when img_size is overridden.
        patch_embed = getattr(model, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None) or cfg.get("input_size", (3, 224, 224))[1:]
        self.input_size = tuple(int(s) for s in size)
        with torch.no_grad():
            probe = self.model.forward_features(torch.zeros(1, 3, *self.input_size))
            self.dim = int(self.model.forward_head(probe).shape[-1])

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever the caller asks: a frozen teacher never trains."""
        return super().train(False)

    @torch.no_grad()
    def prepare(self, image: torch.Tensor, sensor: str) -> torch.Tensor:
        """Model input of ``sensor`` → the teacher's normalised input at its own size."""
        rgb = render_rgb(image, sensor)
        if tuple(rgb.shape[-2:]) != self.input_size:
            rgb = F.interpolate(rgb, size=self.input_size, mode="bilinear", antialias=True)
        return (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)

    @torch.no_grad()
    def pooled(self, image: torch.Tensor, sensor: str) -> torch.Tensor:
        """(B, D_t) pooled embedding of the unmasked image (GFM-style distillation)."""
        features = self.model.forward_features(self.prepare(image, sensor))
        return self.model.forward_head(features).float()

    @torch.no_grad()
    def cells(self, image: torch.Tensor, sensor: str, grid: int) -> torch.Tensor:
        """(B, D_t, grid, grid) patch features area-resized to the mask-cell grid (EVA-style)."""
        features = self.model.forward_features(self.prepare(image, sensor))
        return F.adaptive_avg_pool2d(self._patch_map(features).float(), grid).contiguous()

    def _patch_map(self, features: torch.Tensor) -> torch.Tensor:
        """forward_features → (B, D, h, w): token sequences lose their prefix (class) tokens."""
        if features.ndim == 3:
            tokens = features[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ValueError(f"teacher {self.name}: {tokens.shape[1]} patch tokens not square")
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        if features.ndim == 4:
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":  # timm's Swin
                return features.permute(0, 3, 1, 2)
            return features
        raise ValueError(f"teacher {self.name}: unexpected features {tuple(features.shape)}")


def build_teacher(
    name: str,
    pretrained: bool = True,
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Teacher:
    """A frozen timm teacher by name; ``pretrained`` loads its hub weights (a cluster with
    the Hugging Face cache or network), otherwise a random one (tests, demo).

    ``overrides`` are passed to ``timm.create_model`` (e.g. embed_dim, depth, img_size for a
    small demo teacher). A random teacher is seeded from ``seed`` inside a forked RNG, so every
    DDP rank and every resumed attempt gets the same one and the global RNG is untouched.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(
                name, pretrained=pretrained, num_classes=0, **dict(overrides or {})
            )
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(
                f"cannot build teacher {name!r} (pretrained={pretrained}, overrides="
                f"{dict(overrides or {})}): {error}"
            ) from error
    return Teacher(model, name)


def teacher_for_variant(variant: Mapping[str, Any], seed: int) -> Teacher | None:
    """The teacher a variant's ``objective`` needs (None for plain MIM), checked."""
    name = variant.get("name", "<variant>")
    objective = variant.get("objective", "mim")
    if objective not in OBJECTIVES:
        raise ValueError(f"variants.{name}.objective {objective!r}; expected one of {OBJECTIVES}")
    teacher = variant.get("teacher")
    if objective == "mim":
        if teacher:
            raise ValueError(f"variants.{name}: teacher {teacher!r} given but objective is mim")
        return None
    if not teacher:
        raise ValueError(f"variants.{name}: objective {objective} needs a teacher (timm name)")
    return build_teacher(
        teacher,
        bool(variant.get("teacher_pretrained", True)),
        overrides=variant.get("teacher_overrides"),
        seed=seed,
    )


def model_overrides(objective: str, teacher_dim: int | None) -> dict[str, Any]:
    """Model-config keys an objective sets: the distill head's or the feature decoders' width."""
    if objective == "distill":
        return {"distill": {"dim": teacher_dim}}
    if objective == "feature_recon":
        return {"feature_recon": {"dim": teacher_dim}}
    return {}


def add_teacher_targets(
    entries: Mapping[str, dict[str, Any]], teacher: Teacher, objective: str, grid: int
) -> None:
    """Put the teacher's targets into the model entries (in place), without gradients.

    distill: ``teacher`` (B, D_t) per entry. feature_recon: ``teacher_cells`` and, for paired
    entries, ``partner_teacher_cells``; the partner's features are those of the pair's other
    entry (keys ``<source>/<sensor>``, msgfm.pretrain.batches), so no image is seen twice.
    """
    if objective == "distill":
        for entry in entries.values():
            entry["teacher"] = teacher.pooled(entry["image"], entry["sensor"])
        return
    if objective != "feature_recon":
        raise ValueError(f"objective {objective!r} has no teacher targets")
    cells = {
        key: teacher.cells(entry["image"], entry["sensor"], grid) for key, entry in entries.items()
    }
    for key, entry in entries.items():
        entry["teacher_cells"] = cells[key]
        if "partner" in entry:
            partner_key = f"{key.rsplit('/', 1)[0]}/{entry['partner_sensor']}"
            partner = cells.get(partner_key)
            if partner is None:
                partner = teacher.cells(entry["partner"], entry["partner_sensor"], grid)
            entry["partner_teacher_cells"] = partner
