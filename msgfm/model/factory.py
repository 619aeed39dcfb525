"""Build msGFM from a config dict, and reload its encoder for downstream use.

The config itself (presets, overrides, the geometry checks) lives in the torch-free
``msgfm.model.config``, so the workflow checks a model config when it is planned; the
resolved config is what the trainer saves next to every result and what a checkpoint carries
so ``load_encoder`` can rebuild the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msgfm.model.config import feature_target_scale, resolve_config
from msgfm.model.decoder import PixelDecoder
from msgfm.model.encoder import MlpLayer, SwinEncoder
from msgfm.model.masking import MaskGenerator
from msgfm.model.msgfm import DistillHead, MsGFM
from msgfm.model.patch_embed import SensorPatchEmbed, StackedPatchEmbed


@dataclass(frozen=True)
class MoESettings:
    """Where the MoE MLPs go and how they route (paper §3.4, Table 10; tutel's gate)."""

    stage: int = 2  # 0-based: the third stage
    every_other: bool = True  # odd blocks only; False replaces every block of the stage
    num_experts: int = 8
    top_k: int = 1
    capacity_factor: float = 1.25
    gate_noise: float = 1.0
    batch_prioritized: bool = True
    aux_loss: str = "swin"
    backend: str = "native"
    dispatch: str = "auto"  # native backend: grouped | capacity | auto (msgfm.model.moe)
    routing_scope: str = "source"  # msgfm.model.encoder.ROUTING_SCOPES


def moe_mlp_layer(moe: MoESettings) -> MlpLayer:
    """The encoder's ``mlp_layer`` that puts an ``MoEMlp`` where ``moe`` says."""
    from msgfm.model.moe import MoEMlp

    def layer(stage: int, block: int, dim: int, hidden: int) -> MoEMlp | None:
        if stage != moe.stage or (moe.every_other and block % 2 == 0):
            return None
        return MoEMlp(
            dim,
            hidden,
            num_experts=moe.num_experts,
            top_k=moe.top_k,
            capacity_factor=moe.capacity_factor,
            gate_noise=moe.gate_noise,
            batch_prioritized=moe.batch_prioritized,
            aux_loss=moe.aux_loss,
            backend=moe.backend,
            dispatch=moe.dispatch,
        )

    return layer


def moe_settings(cfg: Mapping[str, Any]) -> MoESettings | None:
    """The MoE part of a resolved config, or None when MoE is off (dense MLPs)."""
    moe = dict(cfg["moe"])
    if not moe.pop("enabled"):
        return None
    return MoESettings(**moe)


def build_encoder(cfg: Mapping[str, Any]) -> SwinEncoder:
    """The shared encoder of a resolved config: dense, or with MoE MLPs (``model.moe``)."""
    moe = moe_settings(cfg)
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
        mlp_layer=moe_mlp_layer(moe) if moe else None,
        routing_scope=moe.routing_scope if moe else "source",
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


class CheckpointFormatError(ValueError):
    """A file or dict is not the checkpoint the caller asked for."""


def read_checkpoint(source: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """A saved state and the name errors call it by: a path is read on the CPU, weights only
    (tensors and plain containers, never pickled code), a dict passes through. The one reader
    of model weights: pretraining ``encoder.pt`` and timm Swin weights alike."""
    if isinstance(source, str | Path):
        return torch.load(source, map_location="cpu", weights_only=True), str(source)
    return source, "<state dict>"


def read_pretraining_checkpoint(
    source: str | Path | Mapping[str, Any],
) -> tuple[Mapping[str, Any], str]:
    """``read_checkpoint`` of an msGFM ``{"config": model.config, "model": state_dict}``."""
    state, origin = read_checkpoint(source)
    if not isinstance(state, Mapping) or "config" not in state or "model" not in state:
        found = sorted(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointFormatError(
            f"{origin}: not an msGFM pretraining checkpoint (expected 'config' and 'model', "
            f"found {found})"
        )
    return state, origin


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
    state, source = read_pretraining_checkpoint(path_or_state)
    model = build_model(state["config"])
    model.load_state_dict(state["model"])
    names = list(sensors) if sensors is not None else model.sensors
    unknown = [name for name in names if name not in model.embeds]
    if unknown:
        raise KeyError(f"{source}: no pretrained embedding for {unknown}; has {model.sensors}")
    embeds = {name: model.embeds[name] for name in names}
    stacked = StackedPatchEmbed(embeds, names) if stack else None
    return PretrainedBackbone(embeds, model.encoder, stacked)
