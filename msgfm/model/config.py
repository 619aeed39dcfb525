"""The msGFM model config: presets, overrides and the checks that a network can be built.

Torch-free, so that the workflow checks every model config it plans (msgfm.plan) with the same
rules the job builds the network with (msgfm.model.factory), instead of failing in the job.

Two presets: ``swin_base`` (the paper: §4, Table 10) and ``demo`` (the same
structure at a size a 2-core CPU trains in seconds). A config names a preset and overrides keys;
``resolve_config`` returns the full config, validated.

Demo choices: 64 px input, patch 4 → token grids 16, 8, 4, 2; window 2 divides all of them;
mask patch 16 (not 32) so a 64 px image has 16 mask cells (⌈16·0.6⌉ = 10 hidden) instead of 4;
depths [2, 2, 2, 2] so every stage has a shifted-window block and stage 3 has one MoE block
(block 1), with 4 experts to keep the expert weights small.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

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
            raise ValueError(
                f"unknown model config key {key!r} (model.{key}); expected one of "
                f"{sorted(resolved)}"
            )
        if isinstance(resolved[key], dict) and key != "sensors":
            unknown = set(value) - set(resolved[key])
            if unknown:
                raise ValueError(
                    f"unknown keys {sorted(unknown)} in model.{key}; expected some of "
                    f"{sorted(resolved[key])}"
                )
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
    stride = encoder_stride(cfg)
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
    stride = encoder_stride(cfg)
    mask_patch = cfg["mask_patch_size"]
    if stride % mask_patch:
        raise ValueError(
            f"model.feature_recon needs mask_patch_size {mask_patch} to divide the encoder "
            f"stride {stride} (each final token then covers whole mask cells)"
        )
    return stride // mask_patch


def stage_resolutions(img_size: int, patch_size: int, num_stages: int) -> list[int]:
    """Token-grid side of each stage: img/patch, then halved by every patch merging."""
    first = img_size // patch_size
    return [first // 2**i for i in range(num_stages)]


def encoder_stride(cfg: Mapping[str, Any]) -> int:
    """Input pixels per final token side: the patch, doubled by every patch merging."""
    return cfg["patch_size"] * 2 ** (len(cfg["depths"]) - 1)


def check_input_size(img_size: int, stride: int, window: int, key: str = "img_size") -> None:
    """An input side the encoder takes: every stage's token grid a whole number of windows,
    which a multiple of stride × window guarantees (msgfm.finetune.backbone rebuilds the
    encoder for it)."""
    if img_size % (stride * window):
        raise ValueError(
            f"{key} {img_size} must be a multiple of stride × window = {stride * window}"
        )
