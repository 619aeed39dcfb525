"""Backbones for finetuning: msGFM weights, a random init, or ImageNet-22k Swin-B (Table 3).

``build_backbone(weights, sensors=…, transfer=…, checkpoint=…, model_cfg=…, img_size=…)``:

``weights`` is where the weights come from, not the workflow's ``init`` (a pretraining variant,
``random`` or ``in22k``: every variant's encoder is ``"msgfm"`` here):

- ``"msgfm"``: the encoder and stems of a pretraining ``encoder.pt`` (``load_encoder``).
  ``model_cfg`` may change training-only settings (``drop_path_rate``, MoE gate noise or
  capacity, ``aux_weight``…); any key that shapes the weights must equal the checkpoint's, or
  the error names each differing key with both values.
- ``"random"``: the same architecture from ``model_cfg`` with a fresh init (Table 3 "Random").
- ``"in22k"``: timm's ``swin_base_patch4_window7_224.ms_in22k`` in our encoder. Parameter
  names equal timm's with ``layers.`` → ``stages.``; the window-7 relative position bias tables
  (13² rows) are resized to our window with timm's ``resize_rel_pos_bias_table``. The
  IN-22k model is a dense Swin-B, so MoE is turned off for this init (Table 3's IN-22k row is a
  plain Swin-B too). Its RGB patch embedding initialises the other stems (below).

Stems the source lacks are *derived* from one it has, band by band: each target band's kernel
is the mean of the kernels of the spectrally overlapping source bands (all source bands where
none overlaps), and the whole kernel is scaled by C_source / C_target, so a spectrally flat image
gives the source stem's response (timm's ``adapt_input_conv`` scales by 3 / C likewise). The
bias and LayerNorm are copied. Derivations: WorldView-3 MUL and PAN (SpaceNet2, not a
pretraining sensor) from the S2 stem (or from RGB when there is no S2 stem), and for in22k the
S2, SAR and DSM stems from RGB (S2's B02/B03/B04 take the blue/green/red kernels; SAR and DSM
the mean RGB kernel). Starting from the pretrained S2 kernels rather than from scratch keeps the
first layer in the feature space the encoder was trained on.

Transfer (paper App. C.2): ``"stacked"`` (method 2, the paper's default) builds one
``StackedPatchEmbed`` over ``sensors`` in order (and drops the per-sensor stems it was built
from); ``"shared"`` (method 1) keeps the stems apart.

Input size: the encoder is rebuilt for ``img_size`` with ``SwinEncoder.set_input_size`` when it
differs from the pretraining size; it must be a multiple of stride × window (192 for Swin-B
at window 6) so every stage's grid is whole windows (timm would otherwise pad windows with
zeros that take part in attention). ``input_size_for`` picks the smallest such size at or
above a dataset's native size (BigEarthNet 120 → 192, SpaceNet2 MUL 162 → 192, SEN12MS-CR
256 → 384, Vaihingen 512 → 576) so no detail is lost to downsampling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from msgfm.data.readers.spacenet2 import MUL_BANDS
from msgfm.data.sensors import RGB_BANDS, SENSORS
from msgfm.model.config import check_input_size, encoder_stride
from msgfm.model.factory import (
    CheckpointFormatError,
    PretrainedBackbone,
    build_embeds,
    build_encoder,
    load_encoder,
    read_checkpoint,
    read_pretraining_checkpoint,
    resolve_config,
)
from msgfm.model.patch_embed import SensorPatchEmbed, StackedPatchEmbed

IN22K_MODEL = "swin_base_patch4_window7_224.ms_in22k"
WEIGHTS = ("msgfm", "random", "in22k")
TRANSFERS = ("stacked", "shared")
# Config keys that shape the weights; the others may differ from a checkpoint's.
ARCHITECTURE_KEYS = ("patch_size", "embed_dim", "depths", "num_heads", "window_size")
ARCHITECTURE_KEYS += ("mlp_ratio", "qkv_bias")
MOE_ARCHITECTURE_KEYS = ("enabled", "stage", "every_other", "num_experts")
# Pretraining-only heads a checkpoint may carry (Table 5's distillation head and feature
# decoders): rebuilt from the checkpoint's own config so its weights load strictly, then dropped
# with the decoders by load_encoder. The finetuning model config does not describe them.
PRETRAINING_HEAD_KEYS = ("distill", "feature_recon")

BANDS: dict[str, tuple[str, ...]] = {
    **{name: sensor.bands for name, sensor in SENSORS.items()},
    "mul": MUL_BANDS,
    "pan": ("pan",),
}
# target sensor -> source sensors in order of preference -> target band -> source bands.
# WorldView-3 bands (nm): coastal 400-450, blue 450-510, green 510-580, yellow 585-625,
# red 630-690, red edge 705-745, NIR1 770-895, NIR2 860-1040, PAN 450-800.
DERIVATIONS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "mul": {
        "s2": {
            "coastal": ("B01",), "blue": ("B02",), "green": ("B03",), "yellow": ("B03", "B04"),
            "red": ("B04",), "red_edge": ("B05", "B06"), "nir1": ("B08",), "nir2": ("B09",),
        },
        "rgb": {"blue": ("B",), "green": ("G",), "yellow": ("G", "R"), "red": ("R",)},
    },
    "pan": {
        "s2": {"pan": ("B02", "B03", "B04", "B05", "B06", "B07")},
        "rgb": {"pan": RGB_BANDS},
    },
    "s2": {"rgb": {"B02": ("B",), "B03": ("G",), "B04": ("R",)}},
    "sar": {"rgb": {}},
    "dsm": {"rgb": {}},
}  # fmt: skip


# Sensors no pretraining data has: their stems are always derived.
NEW_SENSORS = ("mul", "pan")


class BackboneError(ValueError):
    """A checkpoint does not fit the requested backbone (architecture, sensors, format)."""


def sensor_channels(sensor: str) -> int:
    if sensor not in BANDS:
        raise KeyError(f"unknown sensor {sensor!r}; expected one of {sorted(BANDS)}")
    return len(BANDS[sensor])


def input_size_for(native_size: int, model_cfg: Mapping[str, Any] | None = None) -> int:
    """Smallest multiple of stride × window at or above ``native_size`` (module docstring)."""
    cfg = resolve_config(model_cfg or {})
    unit = encoder_stride(cfg) * cfg["window_size"]
    return max(1, -(-native_size // unit)) * unit


def derive_stem(
    source: SensorPatchEmbed,
    source_bands: Sequence[str],
    target_bands: Sequence[str],
    mapping: Mapping[str, Sequence[str]],
) -> SensorPatchEmbed:
    """A stem for ``target_bands`` built from ``source``'s kernels (module docstring)."""
    if len(source_bands) != source.in_chans:
        raise ValueError(f"{len(source_bands)} band names for a {source.in_chans}-channel stem")
    position = {band: i for i, band in enumerate(source_bands)}
    stem = SensorPatchEmbed(len(target_bands), source.embed_dim, source.patch_size)
    weight = source.proj.weight.detach()
    scale = source.in_chans / len(target_bands)
    with torch.no_grad():
        for k, band in enumerate(target_bands):
            picks = [position[b] for b in mapping.get(band, source_bands)]
            stem.proj.weight[:, k] = weight[:, picks].mean(dim=1) * scale
        stem.proj.bias.copy_(source.proj.bias)
        stem.norm.load_state_dict(source.norm.state_dict())
    return stem


def _complete_stems(
    stems: dict[str, SensorPatchEmbed],
    sensors: Sequence[str],
    origin: str,
    derivable: Sequence[str] = tuple(DERIVATIONS),
) -> dict[str, SensorPatchEmbed]:
    """Add the ``derivable`` stems that ``stems`` lacks; error on any other missing one."""
    out = dict(stems)
    for sensor in sensors:
        if sensor in out:
            continue
        sources = DERIVATIONS.get(sensor, {}) if sensor in derivable else {}
        source = next((s for s in sources if s in stems), None)
        if source is None:
            how = f"derivable only from {sorted(sources)}" if sources else "not derivable"
            raise BackboneError(
                f"{origin}: no patch embedding for sensor {sensor!r} (has {sorted(stems)}; {how})"
            )
        out[sensor] = derive_stem(stems[source], BANDS[source], BANDS[sensor], sources[source])
    return {name: out[name] for name in sensors}


def _architecture_mismatches(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    pairs = [(k, want[k], have[k]) for k in ARCHITECTURE_KEYS]
    pairs += [(f"moe.{k}", want["moe"][k], have["moe"][k]) for k in MOE_ARCHITECTURE_KEYS]
    return [f"{k}: config {w!r} vs checkpoint {h!r}" for k, w, h in pairs if w != h]


def _load_msgfm(
    checkpoint: Path | Mapping[str, Any] | None,
    sensors: Sequence[str],
    model_cfg: Mapping[str, Any] | None,
) -> tuple[PretrainedBackbone, set[str]]:
    """The checkpoint's backbone with stems for ``sensors`` and the sensors it brought itself."""
    if checkpoint is None:
        raise BackboneError("weights 'msgfm' need the pretraining checkpoint (encoder.pt)")
    try:
        state, origin = read_pretraining_checkpoint(checkpoint)
    except CheckpointFormatError as error:
        raise BackboneError(f"{error}; for timm Swin weights use weights 'in22k'") from None
    config = resolve_config(state["config"])
    if model_cfg:
        wanted = resolve_config(model_cfg)
        mismatches = _architecture_mismatches(wanted, config)
        if mismatches:
            raise BackboneError(
                f"{origin}: checkpoint architecture differs from the model config: "
                + "; ".join(mismatches)
            )
        kept = ("sensors", "img_size", *PRETRAINING_HEAD_KEYS)
        config = {**wanted, **{key: config[key] for key in kept}}
    backbone = load_encoder({"config": config, "model": state["model"]})
    # a pretraining sensor the checkpoint lacks is a mismatch, not something to improvise
    stems = _complete_stems(dict(backbone.embeds), sensors, origin, NEW_SENSORS)
    return PretrainedBackbone(stems, backbone.encoder), set(backbone.embeds)


def _random(sensors: Sequence[str], model_cfg: Mapping[str, Any] | None) -> PretrainedBackbone:
    base = resolve_config(model_cfg or {})
    config = resolve_config({**base, "sensors": {s: sensor_channels(s) for s in sensors}})
    return PretrainedBackbone(build_embeds(config), build_encoder(config))


def timm_swin_to_encoder(
    timm_state: Mapping[str, torch.Tensor], encoder_state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a timm Swin state dict into our encoder's state and the RGB stem's.

    Renames ``layers.`` → ``stages.``, resizes relative position bias tables to the encoder's
    window, drops the classifier and non-persistent buffers, and reports every key or shape
    that does not fit ``encoder_state`` in one error.
    """
    from timm.layers import resize_rel_pos_bias_table

    converted: dict[str, torch.Tensor] = {}
    stem: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, value in timm_state.items():
        if key.startswith("head.") or key.endswith(("relative_position_index", "attn_mask")):
            continue
        if key.startswith("patch_embed."):
            stem[key.removeprefix("patch_embed.")] = value
            continue
        ours = re.sub(r"^layers\.", "stages.", key)
        if ours not in encoder_state:
            problems.append(f"unexpected {key}")
            continue
        shape = encoder_state[ours].shape
        if key.endswith("relative_position_bias_table") and value.shape != shape:
            if value.shape[1] != shape[1]:
                problems.append(f"{key}: {value.shape[1]} heads vs our {shape[1]}")
                continue
            window = (round((shape[0] ** 0.5 + 1) / 2),) * 2
            value = resize_rel_pos_bias_table(value, new_window_size=window, new_bias_shape=shape)
        if value.shape != shape:
            problems.append(f"{key}: shape {tuple(value.shape)} vs our {tuple(shape)}")
            continue
        converted[ours] = value
    missing = sorted(set(encoder_state) - set(converted))
    if missing:
        problems.append(f"missing {missing[:4]}{' …' if len(missing) > 4 else ''}")
    if not {"proj.weight", "proj.bias", "norm.weight", "norm.bias"} <= set(stem):
        problems.append(f"patch_embed has {sorted(stem)}; expected proj and norm")
    if problems:
        raise BackboneError(
            f"timm Swin weights do not fit the model config ({len(problems)} problems): "
            + "; ".join(problems[:6])
        )
    return converted, stem


def _in22k(
    checkpoint: Path | Mapping[str, torch.Tensor] | None,
    sensors: Sequence[str],
    model_cfg: Mapping[str, Any] | None,
) -> PretrainedBackbone:
    base = resolve_config(model_cfg or {"preset": "swin_base"})
    config = resolve_config({**base, "moe": {**base["moe"], "enabled": False}})
    encoder = build_encoder(config)
    if checkpoint is None:
        import timm

        timm_state, origin = (
            timm.create_model(IN22K_MODEL, pretrained=True).state_dict(),
            IN22K_MODEL,
        )
    else:
        timm_state, origin = read_checkpoint(checkpoint)
    timm_state = timm_state.get("state_dict", timm_state.get("model", timm_state))
    try:
        weights, stem_state = timm_swin_to_encoder(timm_state, encoder.state_dict())
    except BackboneError as error:
        raise BackboneError(f"{origin}: {error}") from None
    encoder.load_state_dict(weights)
    rgb = SensorPatchEmbed(3, config["embed_dim"], config["patch_size"])
    # timm's stem has weights only: its input statistics stay the identity until
    # build_backbone gives it the task's (ImageNet-normalised RGB is ~standard already)
    rgb.load_state_dict({**rgb.state_dict(), **stem_state})
    return PretrainedBackbone(_complete_stems({"rgb": rgb}, sensors, origin), encoder)


def build_backbone(
    weights: str,
    *,
    sensors: Sequence[str],
    transfer: str = "stacked",
    checkpoint: Path | Mapping[str, Any] | None = None,
    model_cfg: Mapping[str, Any] | None = None,
    img_size: int,
    input_statistics: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> PretrainedBackbone:
    """Stems for ``sensors`` (stacking order) + the shared encoder, ready for ``img_size``.

    ``input_statistics``: per sensor, the per-band (mean, std) the stems standardise with when
    they bring none of their own: every stem of a random or IN-22k init and the stems derived
    for new sensors; an msGFM stem keeps the statistics of its pretraining data, as its weights
    expect them.

    ``checkpoint``: the ``encoder.pt`` for "msgfm"; for "in22k" a timm Swin state dict (file
    or mapping; None downloads it through timm). The returned backbone carries
    ``input_size`` (the size its inputs must have) for ``FinetuneModel``.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; expected one of {WEIGHTS}")
    if transfer not in TRANSFERS:
        raise ValueError(f"unknown transfer {transfer!r}; expected one of {TRANSFERS}")
    if not sensors or len(set(sensors)) != len(sensors):
        raise ValueError(f"sensors must be a non-empty list without repeats, got {sensors}")
    pretrained: set[str] = set()
    if weights == "msgfm":
        backbone, pretrained = _load_msgfm(checkpoint, sensors, model_cfg)
    elif weights == "random":
        backbone = _random(sensors, model_cfg)
    else:
        backbone = _in22k(checkpoint, sensors, model_cfg)
    for sensor, stem in backbone.embeds.items():
        if sensor not in pretrained and sensor in (input_statistics or {}):
            stem.set_input_statistics(*input_statistics[sensor])
    encoder = backbone.encoder
    check_input_size(img_size, encoder.stride, encoder.window_size)
    encoder.set_input_size(img_size)
    if transfer == "stacked":
        # the per-sensor stems are folded into the stacked one and would only hold dead weights
        backbone.stacked = StackedPatchEmbed(dict(backbone.embeds), list(sensors))
        backbone.embeds = torch.nn.ModuleDict()
    backbone.input_size = img_size
    return backbone
