"""Build msGFM from a config dict, and reload its encoder for downstream use.

Two presets: ``swin_base`` (the paper: §4, Table 10) and ``demo`` (the same
structure at a size a 2-core CPU trains in seconds). A config names a preset and overrides keys;
``resolve_config`` returns the full config, validated, which is what the trainer saves next to
every result and what a checkpoint carries so ``load_encoder`` can rebuild the network.

Demo choices: 64 px input, patch 4 → token grids 16, 8, 4, 2; window 2 divides all of them;
mask patch 16 (not 32) so a 64 px image has 16 mask cells (⌈16·0.6⌉ = 10 hidden) instead of 4;
depths [2, 2, 2, 2] so every stage has a shifted-window block and stage 3 has one MoE block
(block 1), with 4 experts to keep the expert weights small.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msgfm.model.decoder import PixelDecoder
from msgfm.model.encoder import MoESettings, SwinEncoder, stage_resolutions
from msgfm.model.masking import MaskGenerator
from msgfm.model.msgfm import DistillHead, MsGFM
from msgfm.model.patch_embed import SensorPatchEmbed, StackedPatchEmbed

DEFAULT_SENSORS = {"rgb": 3, "s2": 13, "sar": 2, "dsm": 1}

PRESETS: dict[str, dict[str, Any]] = {
    "swin_base": {
        "img_size": 192,
        "patch_size": 4,
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 6,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "drop_path_rate": 0.0,
        "mask_patch_size": 32,
        "mask_ratio": 0.6,
        "sensors": dict(DEFAULT_SENSORS),
        "rescale_missing": False,
        "aux_weight": 0.01,
        "moe": {
            "enabled": True,
            "stage": 2,
            "every_other": True,
            "num_experts": 8,
            "top_k": 1,
            "capacity_factor": 1.25,
            "gate_noise": 1.0,
            "batch_prioritized": True,
            "aux_loss": "swin",
            "backend": "native",
            # grouped: no padding, fastest on CPU, reads the host per layer; capacity: static
            # shapes, no host read (GPU, torch.compile); auto: grouped only in CPU eager mode.
            "dispatch": "auto",
            # source: each source's batch routed alone in the shared trunk pass (paper §3.4's
            # sensor-by-sensor loading); step: all of a step's tokens routed together.
            "routing_scope": "source",
        },
        "distill": {"dim": None, "alpha": 1.0},
        # EVA-style (Table 5): with a dim, the decoders predict a teacher's D_t-wide patch
        # features on the mask-cell grid instead of pixels (msgfm.model.msgfm).
        "feature_recon": {"dim": None},
    },
}
PRESETS["demo"] = {
    **copy.deepcopy(PRESETS["swin_base"]),
    "img_size": 64,
    "embed_dim": 32,
    "depths": [2, 2, 2, 2],
    "num_heads": [1, 2, 4, 8],
    "window_size": 2,
    "mask_patch_size": 16,
}
PRESETS["demo"]["moe"]["num_experts"] = 4


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Preset + overrides → full, validated config (unknown keys are errors, not ignored)."""
    name = cfg.get("preset", "demo")
    if name not in PRESETS:
        raise ValueError(f"model.preset {name!r} unknown; expected one of {sorted(PRESETS)}")
    resolved = copy.deepcopy(PRESETS[name])
    for key, value in cfg.items():
        if key == "preset":
            continue
        if key not in resolved:
            raise KeyError(f"unknown model config key {key!r}; expected one of {sorted(resolved)}")
        if isinstance(resolved[key], dict) and key != "sensors":
            unknown = set(value) - set(resolved[key])
            if unknown:
                raise KeyError(f"unknown keys {sorted(unknown)} in model.{key}")
            resolved[key].update(value)
        else:
            resolved[key] = copy.deepcopy(value)
    resolved["preset"] = name
    _validate(resolved)
    return resolved


def _validate(cfg: Mapping[str, Any]) -> None:
    depths, heads = list(cfg["depths"]), list(cfg["num_heads"])
    if len(depths) != len(heads) or not depths:
        raise ValueError(f"model.depths {depths} and model.num_heads {heads} must match in length")
    img, patch, window = cfg["img_size"], cfg["patch_size"], cfg["window_size"]
    stride = patch * 2 ** (len(depths) - 1)
    if img % stride:
        raise ValueError(f"model.img_size {img} must be a multiple of the encoder stride {stride}")
    for stage, side in enumerate(stage_resolutions(img, patch, len(depths))):
        if side > window and side % window:
            raise ValueError(
                f"model.window_size {window} does not divide stage {stage}'s {side}×{side} grid"
            )
    for stage, count in enumerate(heads):
        if (cfg["embed_dim"] * 2**stage) % count:
            raise ValueError(f"stage {stage} width is not divisible by {count} heads")
    mask_patch = cfg["mask_patch_size"]
    if img % mask_patch or mask_patch % patch:
        raise ValueError(
            f"model.mask_patch_size {mask_patch} must divide img_size {img} and be a multiple "
            f"of patch_size {patch}"
        )
    if not cfg["sensors"] or any(int(c) < 1 for c in cfg["sensors"].values()):
        raise ValueError(f"model.sensors must map names to channel counts ≥ 1: {cfg['sensors']}")
    if cfg["feature_recon"]["dim"]:
        feature_target_scale(cfg)
    moe = cfg["moe"]
    if moe["enabled"]:
        if not 0 <= moe["stage"] < len(depths):
            raise ValueError(f"model.moe.stage {moe['stage']} out of range 0..{len(depths) - 1}")
        if moe["every_other"] and depths[moe["stage"]] < 2:
            raise ValueError("model.moe.every_other needs a stage with at least 2 blocks")


def feature_target_scale(cfg: Mapping[str, Any]) -> int:
    """Mask cells per final token side (r) when decoding teacher features on the mask grid.

    The teacher's features are resized to the g×g mask-cell grid (g = img / mask patch) so that
    a cell is either wholly masked or wholly visible; each final token (stride 32) predicts the
    r×r cells under it: r = 1 for the paper (6×6 both), 2 for the demo (2×2 tokens, 4×4 cells).
    """
    stride = cfg["patch_size"] * 2 ** (len(cfg["depths"]) - 1)
    mask_patch = cfg["mask_patch_size"]
    if stride % mask_patch:
        raise ValueError(
            f"model.feature_recon needs mask_patch_size {mask_patch} to divide the encoder "
            f"stride {stride} (each final token then covers whole mask cells)"
        )
    return stride // mask_patch


def moe_settings(cfg: Mapping[str, Any]) -> MoESettings | None:
    """The MoE part of a resolved config, or None when MoE is off (dense MLPs)."""
    moe = dict(cfg["moe"])
    if not moe.pop("enabled"):
        return None
    return MoESettings(**moe)


def build_encoder(cfg: Mapping[str, Any]) -> SwinEncoder:
    """The shared encoder of a resolved config."""
    return SwinEncoder(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depths=cfg["depths"],
        num_heads=cfg["num_heads"],
        window_size=cfg["window_size"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        drop_path_rate=cfg["drop_path_rate"],
        moe=moe_settings(cfg),
    )


def build_embeds(cfg: Mapping[str, Any]) -> dict[str, SensorPatchEmbed]:
    """One patch embedding per configured sensor."""
    return {
        name: SensorPatchEmbed(
            int(chans), cfg["embed_dim"], cfg["patch_size"], rescale_missing=cfg["rescale_missing"]
        )
        for name, chans in cfg["sensors"].items()
    }


def build_model(cfg: Mapping[str, Any]) -> MsGFM:
    """The pretraining model for a (partial) config; ``model.config`` is the resolved one."""
    resolved = resolve_config(cfg)
    encoder = build_encoder(resolved)
    feature_dim = resolved["feature_recon"]["dim"]
    if feature_dim:  # the same 1×1 conv + PixelShuffle head, to D_t features per mask cell
        scale = feature_target_scale(resolved)
        decoders = {
            name: PixelDecoder(encoder.num_features, int(feature_dim), scale)
            for name in resolved["sensors"]
        }
    else:
        decoders = {
            name: PixelDecoder(encoder.num_features, int(chans), encoder.stride)
            for name, chans in resolved["sensors"].items()
        }
    distill = resolved["distill"]
    head = DistillHead(encoder.num_features, int(distill["dim"])) if distill["dim"] else None
    return MsGFM(
        build_embeds(resolved),
        encoder,
        decoders,
        aux_weight=resolved["aux_weight"],
        distill_head=head,
        distill_alpha=distill["alpha"],
        target="features" if feature_dim else "pixels",
        config=resolved,
    )


def build_mask_generator(cfg: Mapping[str, Any]) -> MaskGenerator:
    """The SimMIM mask generator matching a model config (for the data transform)."""
    resolved = resolve_config(cfg)
    return MaskGenerator(
        resolved["img_size"],
        resolved["mask_patch_size"],
        resolved["patch_size"],
        resolved["mask_ratio"],
    )


class PretrainedBackbone(nn.Module):
    """Patch embedding(s) + shared encoder as a feature extractor (paper App. C.2).

    ``stacked`` set: method 2, one stem over the sensors' channels stacked in
    ``stacked.sensors`` order; call with ``sensor=None``. Otherwise method 1: call once per
    sensor with its name, and concatenate the features in the head.
    """

    def __init__(
        self,
        embeds: Mapping[str, SensorPatchEmbed],
        encoder: SwinEncoder,
        stacked: StackedPatchEmbed | None = None,
    ) -> None:
        super().__init__()
        self.embeds = nn.ModuleDict(embeds)
        self.encoder = encoder
        self.stacked = stacked
        self.num_features = encoder.num_features
        self.stage_dims = list(encoder.dims)

    def forward_features(
        self,
        image: torch.Tensor,
        sensor: str | None = None,
        return_stages: bool = False,
        band_valid: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Input in the data layer's normalisation (the stems standardise it themselves);
        ``band_valid`` (B, C) marks the bands a dataset really has (BigEarthNet: no B10)."""
        if sensor is None:
            if self.stacked is None:
                raise ValueError(f"name the sensor (one of {sorted(self.embeds)}) or load stacked")
            tokens = self.stacked(image, band_valid)
        else:
            if sensor not in self.embeds:
                raise KeyError(f"no patch embedding for {sensor!r}; have {sorted(self.embeds)}")
            tokens = self.embeds[sensor](image, band_valid)
        return self.encoder.forward_features(tokens, return_stages=return_stages)

    def forward(self, image: torch.Tensor, sensor: str | None = None) -> torch.Tensor:
        return self.forward_features(image, sensor)


def load_encoder(
    path_or_state: str | Path | Mapping[str, Any],
    sensors: Sequence[str] | None = None,
    *,
    stack: bool = False,
) -> PretrainedBackbone:
    """Rebuild the encoder and patch embeddings from a pretraining checkpoint.

    The checkpoint is ``{"config": model.config, "model": model.state_dict()}`` (a path to one
    saved with ``torch.save``, or the dict itself). ``sensors`` keeps only those stems (all by
    default); ``stack=True`` also builds the stacked stem over ``sensors`` in the given order.
    The decoders, mask token and distillation head are pretraining-only and dropped.
    """
    source = str(path_or_state) if isinstance(path_or_state, str | Path) else "<state dict>"
    state = (
        torch.load(path_or_state, map_location="cpu", weights_only=True)
        if isinstance(path_or_state, str | Path)
        else path_or_state
    )
    if "config" not in state or "model" not in state:
        raise KeyError(f"{source}: checkpoint must hold 'config' and 'model', has {sorted(state)}")
    model = build_model(state["config"])
    model.load_state_dict(state["model"])
    names = list(sensors) if sensors is not None else model.sensors
    unknown = [name for name in names if name not in model.embeds]
    if unknown:
        raise KeyError(f"{source}: no pretrained embedding for {unknown}; has {model.sensors}")
    embeds = {name: model.embeds[name] for name in names}
    stacked = StackedPatchEmbed(embeds, names) if stack else None
    return PretrainedBackbone(embeds, model.encoder, stacked)
