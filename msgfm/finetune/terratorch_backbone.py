"""msGFM's encoder as a TerraTorch backbone, so TerraTorch's finetuning configs can name it.

TerraTorch (``pip install msgfm[terratorch]``) builds a task model from a backbone it finds by
name in its backbone registry; it has no entry-point discovery, so a backbone is registered by
importing the module that defines it. Importing this module registers ``msgfm_encoder``; a
model config then reads::

    backbone: msgfm_encoder
    backbone_checkpoint_path: results/.../encoder.pt   # pretraining output, see load_encoder
    backbone_bands: [B01, B02, …, B12, VV, VH]          # S2 then SAR, in input channel order

``bands`` are whole sensors' band lists (``msgfm.finetune.backbone.BANDS``) in the order the
input stacks them; they pick the stems and the stacking order of the paper's default transfer
(method 2, App. C.2). Input is in msGFM's data-layer units: the stems standardise it with their
pretraining statistics themselves.

The backbone returns the four stage maps (NCHW, no norm: the maps finetuning's UperNet taps,
``msgfm.finetune.model``) and, last, the final normed map that ``load_encoder``'s backbone
returns and that the classification heads pool. TerraTorch's decoders take the last entry by
default (classification, FCN); UperNet takes the first four through a ``SelectIndices`` neck.
TerraTorch's tasks only know the head's loss: a MoE encoder's balancing loss
(``backbone.encoder.aux_loss()``) is theirs to add.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
from torch import nn

from msgfm.finetune.backbone import BANDS, BackboneError, build_backbone
from msgfm.model.factory import PretrainedBackbone, resolve_config


def sensors_for_bands(bands: Sequence[str]) -> list[str]:
    """The sensors whose band lists, concatenated in order, are exactly ``bands``."""
    sensors: list[str] = []
    start = 0
    while start < len(bands):
        sensor = next(
            (s for s, names in BANDS.items() if tuple(bands[start : start + len(names)]) == names),
            None,
        )
        if sensor is None:
            raise ValueError(
                f"bands[{start}:] = {list(bands[start : start + 3])}… do not start a sensor's "
                f"band list; each sensor's bands come whole and in order: {BANDS}"
            )
        sensors.append(sensor)
        start += len(BANDS[sensor])
    if not sensors:
        raise ValueError("bands is empty; name the input's bands, e.g. the 13 S2 bands")
    return sensors


class MsGFMBackbone(nn.Module):
    """A ``PretrainedBackbone`` with a stacked stem, giving TerraTorch its list of feature maps."""

    def __init__(self, backbone: PretrainedBackbone, bands: Sequence[str]) -> None:
        super().__init__()
        if backbone.stacked is None:
            raise ValueError("MsGFMBackbone needs a backbone with a stacked stem")
        self.backbone = backbone
        self.bands = list(bands)
        self.out_channels = [*backbone.stage_dims, backbone.num_features]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        final, stages = self.backbone.forward_features(image, None, return_stages=True)
        return [*stages, final]


@TERRATORCH_BACKBONE_REGISTRY.register
def msgfm_encoder(
    checkpoint_path: str | Path, bands: Sequence[str], img_size: int | None = None
) -> MsGFMBackbone:
    """The encoder of a pretraining ``encoder.pt`` with stems for ``bands`` (module docstring).

    ``img_size`` defaults to the pretraining size; another must be a multiple of the encoder's
    stride × window (``msgfm.finetune.backbone.input_size_for`` picks one).
    """
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or "config" not in state:
        raise BackboneError(
            f"{checkpoint_path}: not an msGFM pretraining checkpoint (no 'config'); "
            "expected the encoder.pt that load_encoder reads"
        )
    backbone = build_backbone(
        "msgfm",
        sensors=sensors_for_bands(bands),
        checkpoint=state,
        img_size=img_size or resolve_config(state["config"])["img_size"],
    )
    return MsGFMBackbone(backbone, bands)
