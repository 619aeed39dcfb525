"""The finetuning model: backbone + task head, transfer method 1 or 2, and layer decay.

``FinetuneModel.forward(inputs)`` takes the batch's images keyed by role or by sensor name
(``{"s2": …, "sar": …}``, ``{"sar": …, "s2_cloudy": …}`` or ``{"sar": …, "s2": …}``). Each
image is resized (bilinear, antialiased when shrinking; a no-op at the right size) to the
backbone's ``input_size``, then:

- ``transfer="stacked"`` (App. C.2 method 2): the images are concatenated along channels in
  ``sensors`` order and go through the stacked stem and the encoder once;
- ``transfer="shared"`` (method 1): each image goes through its own stem and the shared
  encoder, and the per-sensor final maps (classification) or per-stage maps (dense heads) are
  concatenated along channels, so the head sees ``n_sensors`` × the widths.

Outputs per task (the tasks are declared in ``msgfm.data.registry``):
- bigearthnet: (B, 19) logits (multi-label: train with BCE-with-logits);
- sen12ms_cr: (B, 13, H, W) cloud-free S2 in [0, 1] (sigmoid), H, W = the inputs' size;
- spacenet2: (B, 8, H, W) pan-sharpened MUL in [0, 1] (sigmoid) at the PAN image's size: PAN
  enters the encoder with MUL (resized to the input size) *and* the decoder as a
  full-resolution guide;
- vaihingen: (B, 6, H, W) logits at the inputs' size.
``output_size`` overrides H, W (e.g. SpaceNet2 without PAN).

Layer decay (GFM finetunes with it; BEiT/timm convention): layer 0 = patch embeddings,
block k (counted over all stages) = layer k + 1, a stage's patch merging shares the layer of
the block before it, the final norm and the head = layer L + 1 with L blocks; a parameter at
layer i trains at ``lr · decay^(L + 1 − i)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.finetune.backbone import build_backbone, input_size_for
from msgfm.finetune.data import TaskSpec, task_spec
from msgfm.finetune.heads import ClassificationHead, RegressionDecoder, UperNetHead
from msgfm.model.factory import PretrainedBackbone
from msgfm.model.msgfm import no_weight_decay


def _sensor_of(spec: TaskSpec, key: str) -> str:
    """Map an inputs key (role or sensor name) to the sensor whose stem reads it."""
    for role, sensor in spec.inputs:
        if key in (role, sensor):
            return sensor
    raise KeyError(f"task {spec.name} has no input {key!r}; roles/sensors are {list(spec.inputs)}")


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    shrink = image.shape[-1] > size or image.shape[-2] > size
    return F.interpolate(
        image, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )


class FinetuneModel(nn.Module):
    """Backbone + head for one downstream task (see the module docstring)."""

    def __init__(
        self,
        backbone: PretrainedBackbone,
        head: nn.Module,
        *,
        task: str,
        sensors: Sequence[str],
        transfer: str = "stacked",
        input_size: int | None = None,
        output_size: int | None = None,
        band_valid: Mapping[str, Sequence[bool]] | None = None,
    ) -> None:
        super().__init__()
        self.spec = task_spec(task)
        self.keys = list(sensors)
        self.stems = [_sensor_of(self.spec, key) for key in self.keys]
        # Per input key, the bands the dataset has (None: all); a constant of the task.
        self.band_valid = {
            key: torch.as_tensor(list(valid), dtype=torch.bool)
            for key, valid in (band_valid or {}).items()
            if key in self.keys and not all(valid)
        }
        self.transfer = transfer
        if transfer == "stacked":
            stacked = getattr(backbone.stacked, "sensors", None)
            if stacked is None or list(stacked) != self.stems:
                raise ValueError(
                    f"stacked transfer needs the backbone stacked over {self.stems}, "
                    f"it is stacked over {stacked}"
                )
        elif transfer == "shared":
            missing = [s for s in self.stems if s not in backbone.embeds]
            if missing:
                raise ValueError(f"shared transfer: the backbone has no stem for {missing}")
        else:
            raise ValueError(f"unknown transfer {transfer!r}; expected 'stacked' or 'shared'")
        self.input_size = input_size or getattr(backbone, "input_size", None)
        if not self.input_size:
            raise ValueError(
                "input_size unknown: pass it or build the backbone with build_backbone"
            )
        self.output_size = output_size
        guide = self.spec.guide
        self.guide_key = next(
            (k for k in self.keys if guide in (k, _sensor_of(self.spec, k))), None
        )
        self.backbone = backbone
        self.head = head
        self._aux = torch.zeros(())

    @property
    def task(self) -> str:
        return self.spec.name

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Parameter name → layer for timm's layer decay (module docstring); timm's hook.

        Only the per-block grouping exists: ``coarse`` (one group per stage) is refused.
        """
        if coarse:
            raise ValueError("FinetuneModel groups parameters per block only (coarse=False)")
        ids, head_layer = layer_ids(self)
        prefixes = sorted(ids.items(), key=lambda item: -len(item[0]))
        return lambda name: next(
            (i for prefix, i in prefixes if name.startswith(prefix)), head_layer
        )

    def aux_loss(self) -> torch.Tensor:
        """Summed MoE balancing loss of the last forward (0 without MoE)."""
        return self._aux

    def _encode(
        self, images: list[torch.Tensor], dense: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        encoder = self.backbone.encoder
        valid = [self._valid(key, image) for key, image in zip(self.keys, images, strict=True)]
        if self.transfer == "stacked":
            stacked_valid = (
                None
                if all(v is None for v in valid)
                else torch.cat(
                    [
                        v if v is not None else image.new_ones(len(image), image.shape[1])
                        for v, image in zip(valid, images, strict=True)
                    ],
                    1,
                )
            )
            out = self.backbone.forward_features(
                torch.cat(images, 1), None, return_stages=dense, band_valid=stacked_valid
            )
            self._aux = encoder.aux_loss()
            return out if dense else (out, None)
        finals, stages, aux = [], [], []
        for image, sensor, bands in zip(images, self.stems, valid, strict=True):
            out = self.backbone.forward_features(
                image, sensor, return_stages=dense, band_valid=bands
            )
            final, per_stage = out if dense else (out, None)
            finals.append(final)
            stages.append(per_stage)
            aux.append(encoder.aux_loss())
        self._aux = torch.stack(aux).sum()
        merged = [torch.cat(level, 1) for level in zip(*stages, strict=True)] if dense else None
        return torch.cat(finals, 1), merged

    def _valid(self, key: str, image: torch.Tensor) -> torch.Tensor | None:
        """(B, C) band validity of one input, None when it has every band."""
        valid = self.band_valid.get(key)
        if valid is None:
            return None
        return valid.to(device=image.device, dtype=image.dtype).expand(len(image), -1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # each input under its own key, or under its stem's sensor name (role s2_cloudy → s2)
        found = {
            key: inputs[key] if key in inputs else inputs.get(stem)
            for key, stem in zip(self.keys, self.stems, strict=True)
        }
        missing = [key for key, image in found.items() if image is None]
        if missing:
            raise KeyError(f"{self.task}: inputs lack {missing}; got {sorted(inputs)}")
        images = [_resize(found[key], self.input_size) for key in self.keys]
        kind = self.spec.kind
        final, stages = self._encode(images, dense=kind != "classification")
        if kind == "classification":
            return self.head(final)
        reference = found[self.guide_key or self.keys[0]]
        out_size = (self.output_size,) * 2 if self.output_size else tuple(reference.shape[-2:])
        if kind == "segmentation":
            return self.head(stages, out_size)
        guide = found[self.guide_key] if self.guide_key else None
        return torch.sigmoid(self.head(stages, out_size, guide))


def build_head(
    task: str,
    backbone: PretrainedBackbone,
    *,
    num_inputs: int,
    transfer: str = "stacked",
    channels: int | None = None,
    out_scale: int = 1,
    guide_chans: int = 0,
) -> nn.Module:
    """The task's head for a backbone; with "shared" transfer widths grow by ``num_inputs``."""
    spec = task_spec(task)
    width = num_inputs if transfer == "shared" else 1
    dims = [d * width for d in backbone.stage_dims]
    if spec.kind == "classification":
        return ClassificationHead(dims[-1], spec.num_outputs)
    if spec.kind == "segmentation":
        return UperNetHead(dims, spec.num_outputs, channels or 512)
    return RegressionDecoder(
        dims,
        spec.num_outputs,
        backbone.encoder.stride,
        out_scale,
        channels=channels or 128,
        guide_chans=guide_chans,
    )


def build_finetune_model(
    task: str,
    *,
    weights: str,
    sensors: Sequence[str] | None = None,
    transfer: str = "stacked",
    checkpoint: Path | Mapping[str, Any] | None = None,
    model_cfg: Mapping[str, Any] | None = None,
    native_size: int | None = None,
    img_size: int | None = None,
    output_size: int | None = None,
    head_channels: int | None = None,
    input_statistics: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    band_valid: Mapping[str, Sequence[bool]] | None = None,
) -> FinetuneModel:
    """Backbone + head + model in one call.

    ``sensors``: the inputs' keys in stacking order (default: all the task's roles).
    ``input_statistics``: per input key, the per-band (mean, std) of the task's training inputs
    for the stems that bring none of their own (see ``build_backbone``).
    ``band_valid``: per input key, which bands the dataset really has (the shard set's
    ``valid_bands``); the stems zero the others after standardisation.
    ``img_size``: the encoder's input size; by default ``input_size_for(native_size)``.
    ``output_size``: the dense output's side when it differs from the input's (SpaceNet2's
    650 px target); it also sets the decoder's upsampling (the next power of two above
    output / input).
    """
    spec = task_spec(task)
    keys = list(sensors or [role for role, _ in spec.inputs])
    stems = [_sensor_of(spec, key) for key in keys]
    if img_size is None:
        if native_size is None:
            raise ValueError("give img_size or the data's native_size")
        img_size = input_size_for(native_size, model_cfg)
    backbone = build_backbone(
        weights,
        sensors=stems,
        transfer=transfer,
        checkpoint=checkpoint,
        model_cfg=model_cfg,
        img_size=img_size,
        input_statistics={
            stem: input_statistics[key]
            for key, stem in zip(keys, stems, strict=True)
            if key in (input_statistics or {})
        },
    )
    ratio = (output_size or img_size) / img_size
    out_scale = 2 ** max(0, math.ceil(math.log2(ratio)))
    guide = spec.guide
    has_guide = any(guide in (key, stem) for key, stem in zip(keys, stems, strict=True))
    head = build_head(
        task,
        backbone,
        num_inputs=len(keys),
        transfer=transfer,
        channels=head_channels,
        out_scale=out_scale,
        guide_chans=1 if has_guide else 0,
    )
    return FinetuneModel(
        backbone,
        head,
        task=task,
        sensors=keys,
        transfer=transfer,
        input_size=img_size,
        output_size=output_size,
        band_valid=band_valid,
    )


def layer_ids(model: FinetuneModel) -> tuple[dict[str, int], int]:
    """Parameter-name prefix → layer id (module docstring), and the head's layer L + 1."""
    stages = model.backbone.encoder.stages
    depths = [len(stage.blocks) for stage in stages]
    head_layer = sum(depths) + 1
    prefix = "backbone.encoder.stages"
    ids = {"backbone.embeds.": 0, "backbone.stacked.": 0}
    for i, depth in enumerate(depths):
        before = sum(depths[:i])
        if stages[i].downsample is not None and not isinstance(stages[i].downsample, nn.Identity):
            ids[f"{prefix}.{i}.downsample."] = before
        for j in range(depth):
            ids[f"{prefix}.{i}.blocks.{j}."] = before + j + 1
    ids["backbone.encoder.norm."] = head_layer
    return ids, head_layer


def layer_decay_groups(
    model: FinetuneModel, base_lr: float, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups with a ``lr_scale`` per layer (timm's ``param_groups_layer_decay`` reading
    ``model.group_matcher()`` and ``model.no_weight_decay()``), for ``build_optimizer``.

    Groups carry the unscaled ``lr`` (``base_lr``): timm's schedulers (``build_scheduler``)
    multiply it by ``lr_scale`` on every update, the head's scale being 1.
    """
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    groups = param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=layer_decay,
    )
    for group in groups:
        group["lr"] = base_lr
    return groups
