"""The msGFM pretraining model: per-sensor stems, one shared encoder, per-sensor decoders.

``MsGFM.forward(batch)`` takes one step's heterogeneous batch: a mapping from an
*entry name* (a data source, e.g. ``"sen12ms_s2"``) to a dict

- ``image``  (B, C_i, H, W) normalised float; ``mask`` (B, H/4, W/4) SimMIM token mask;
- ``sensor`` the sensor name selecting f_i and D_i (defaults to the entry name; separate from
  the entry name because two sources may share a sensor: GeoPile RGB and MDAS RGB);
- optional ``band_valid`` (B, C_i) validity of the input's bands;
- optional ``partner`` (B, C_j, H, W), ``partner_sensor`` j and ``cross`` (B,) bool: samples
  flagged ``cross`` reconstruct the partner image through D_j (paper Eq. 1) with their *own*
  mask, the others reconstruct themselves through D_i (Eq. 2);
- optional ``teacher`` (B, D_t) frozen-teacher features for GFM-style distillation (Table 5);
- ``teacher_cells`` (B, D_t, g, g) (and ``partner_teacher_cells`` with a partner) when the model
  reconstructs teacher features instead of pixels (EVA-style, Table 5): see below.

The entries share one encoder pass: each goes through its own stem, the token grids are
concatenated along the batch and run through the shared trunk together, and the features are
split back for the per-sensor decoders (entries whose grids differ, e.g. sources tiled at
other sizes, get one pass per grid). At 192 px that is one pass of 216 images instead of five
of 128/32/32/12/12, most of them too small to fill a GPU. Every dense layer acts per image
(LayerNorm per token, attention within an image's windows), so this changes no result. The
MoE layers are not per image: capacity, batch-prioritised routing and the balancing loss
depend on which tokens are routed together. The paper loads the sensors one after another
(§3.4), so each routing covers one source's batch; the encoder keeps that in the shared pass
(``groups``: every source's tokens are routed as if alone, with its own capacity and
loss, and one dispatch serves all), so the default routes exactly as one pass per source.
``model.moe.routing_scope: step`` routes the step's tokens together instead (capacity shared
by all sensors, one balancing loss over all tokens), the semantics of a single mixed batch.
Every final-stage token goes through
the sensor's own decoder D_i and, for an entry with cross flags, through the partner's D_j too;
the self/cross choice and the SimMIM mask are multiplicative weights on the loss, never a
selection. Selecting the chosen tokens would be cheaper (at 192 px 14 of 36 tokens carry no
loss) but gives shapes that depend on the data: the host would have to read the mask back
every step (a device sync that stalls the queue of GPU work) and torch.compile could not
trace the step as one graph. The decoders are 1×1 projections: at Swin-B and 192 px the
extra decoding is at most ~6% of the encoder's MACs (a SAR entry also decoding S2's bands).
The entry's loss is SimMIM's masked L1 (paper §3.4) generalised to groups with different
channel counts, ``Σ_g Σ|pred−target|·m / C_g / (Σ_g Σ m + 1e-5)``, which is exactly
SimMIM's when all samples share one target, and weighs every masked pixel of the batch
equally otherwise.

With ``target="features"`` (EVA-style) the decoders D_i predict a frozen teacher's patch
features on the g×g SimMIM mask-cell grid instead of pixels: each final token predicts the r×r
cells it covers (r = encoder stride / mask patch; 1 at 192 px, where both grids are 6×6), and
the loss is ``1 − cos`` averaged over the masked cells, cross-sensor samples predicting their
partner image's teacher features through D_j, exactly as pixels are routed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.model.decoder import PixelDecoder
from msgfm.model.encoder import SwinEncoder
from msgfm.model.masking import apply_mask_token, pixel_mask
from msgfm.model.patch_embed import SensorPatchEmbed

L1_EPS = 1e-5
RECONSTRUCTION_TARGETS = ("pixels", "features")
# (prediction, target, mask) → (numerator, denominator) of a masked mean over a batch.
LossTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def masked_l1_terms(
    pred: torch.Tensor, target: torch.Tensor, mask_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ|pred−target|·m / C, Σ m): numerator and denominator of the masked L1.

    Channels are dim 1 both for whole images (B, C, H, W) and for patches (n, C, s, s).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    numerator = ((pred - target).abs() * mask_px).sum() / target.shape[1]
    return numerator, mask_px.sum()


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
    """Masked L1: sum(|pred−target|·mask) / (sum(mask) + 1e-5) / C_target, mask (B, 1, H, W)."""
    numerator, denominator = masked_l1_terms(pred, target, mask_px)
    return numerator / (denominator + L1_EPS)


def patchify(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, H/size, W/size, C, size, size): the pixels under each final token."""
    b, c, h, w = images.shape
    return images.view(b, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5)


def masked_cosine_terms(
    pred: torch.Tensor, target: torch.Tensor, mask_cells: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ (1 − cos(pred, target))·m, Σ m) over cells; features are dim 1, mask (n, 1, …)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    error = 1.0 - F.cosine_similarity(pred, target.detach().to(pred.dtype), dim=1)
    return (error * mask_cells[:, 0]).sum(), mask_cells.sum()


def distill_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between (B, D) student and teacher features."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
            "set distill.dim to the teacher's width"
        )
    return F.cosine_similarity(student, teacher.detach().to(student.dtype), dim=-1).mean()


def distill_loss(
    recon_l1: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """GFM's objective: masked L1 − α·cos(student, teacher)."""
    return recon_l1 - alpha * distill_cosine(student, teacher)


def no_weight_decay(model: nn.Module) -> set[str]:
    """The parameters that take no weight decay (SimMIM/GFM practice): norms, biases (the MoE
    experts' stacked 2-D ones too), relative position bias tables and the mask token.

    Every model's ``no_weight_decay()`` returns this, the hook timm's optimiser factory and
    ``msgfm.train.optim.param_groups`` read, so pretraining and finetuning share one rule.
    """
    return {
        name
        for name, param in model.named_parameters()
        if param.ndim <= 1 or name.endswith(("bias", "relative_position_bias_table", "mask_token"))
    }


class DistillHead(nn.Module):
    """Student stage-3 map (B, h, w, C) → average pool → Linear(C, D_teacher)."""

    def __init__(self, in_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, teacher_dim)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        return self.proj(merged.mean(dim=(1, 2)))


class MsGFM(nn.Module):
    """SimMIM pretraining over several sensors with cross-sensor targets and MoE aux loss.

    ``target`` says what the decoders reconstruct: ``"pixels"`` (SimMIM) or ``"features"``
    (a teacher's patch features on the mask-cell grid, EVA-style); the decoders' output width
    and scale must match (C_i channels at the encoder stride, or D_t at r).
    """

    def __init__(
        self,
        embeds: Mapping[str, SensorPatchEmbed],
        encoder: SwinEncoder,
        decoders: Mapping[str, PixelDecoder],
        *,
        aux_weight: float = 0.01,
        distill_head: DistillHead | None = None,
        distill_alpha: float = 1.0,
        target: str = "pixels",
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if set(embeds) != set(decoders):
            raise ValueError(f"embeddings {sorted(embeds)} and decoders {sorted(decoders)} differ")
        if target not in RECONSTRUCTION_TARGETS:
            raise ValueError(f"target {target!r} unknown; expected one of {RECONSTRUCTION_TARGETS}")
        self.target = target
        self.embeds = nn.ModuleDict(embeds)
        self.encoder = encoder
        self.decoders = nn.ModuleDict(decoders)
        embed_dim = next(iter(self.embeds.values())).embed_dim
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.aux_weight = aux_weight
        self.distill_head = distill_head
        self.distill_alpha = distill_alpha
        self.config = dict(config or {})

    @property
    def sensors(self) -> list[str]:
        return list(self.embeds)

    def _module_for(self, table: nn.ModuleDict, sensor: str) -> nn.Module:
        if sensor not in table:
            raise KeyError(f"no module for sensor {sensor!r}; the model has {sorted(table)}")
        return table[sensor]

    def embed(
        self,
        image: torch.Tensor,
        sensor: str,
        mask: torch.Tensor | None = None,
        band_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f_i then the mask token: NHWC tokens ready for the shared encoder."""
        tokens = self._module_for(self.embeds, sensor)(image, band_valid)
        if mask is not None:
            tokens = apply_mask_token(tokens, mask, self.mask_token)
        return tokens

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self)

    def forward(
        self,
        batch: Mapping[str, Mapping[str, Any]],
        weights: Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and detached components; ``weights`` scales entries' losses (default 1)."""
        if not batch:
            raise ValueError("empty batch: expected at least one sensor entry")
        weights = weights or {}
        total = self.mask_token.new_zeros(())
        aux = self.mask_token.new_zeros(())
        components: dict[str, torch.Tensor] = {}
        tokens = {key: self._embed_entry(key, entry) for key, entry in batch.items()}
        for keys in _same_grid(tokens):
            encoded = self._encode_together(keys, tokens, batch)
            aux = aux + self.encoder.aux_loss()
            for key, (features, merged) in zip(keys, encoded, strict=True):
                entry_loss, parts = self._entry_loss(key, batch[key], features, merged)
                total = total + float(weights.get(key, 1.0)) * entry_loss
                components.update(parts)
        components["aux"] = aux.detach()
        total = total + self.aux_weight * aux
        components["loss"] = total.detach()
        return total, components

    def _embed_entry(self, key: str, entry: Mapping[str, Any]) -> torch.Tensor:
        for required in ("image", "mask"):
            if required not in entry:
                raise KeyError(f"batch entry {key!r} lacks {required!r}")
        if entry.get("teacher") is not None and self.distill_head is None:
            raise ValueError(
                f"entry {key!r} has teacher features but the model has no distill head "
                "(set distill.dim)"
            )
        sensor = entry.get("sensor", key)
        return self.embed(entry["image"], sensor, entry["mask"], entry.get("band_valid"))

    def _encode_together(
        self,
        keys: list[str],
        tokens: Mapping[str, torch.Tensor],
        batch: Mapping[str, Mapping[str, Any]],
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One trunk pass over these entries' token grids; (features, stage-3 map) per entry,
        the map only where the entry distils a teacher (see the module doc)."""
        sizes = [tokens[key].shape[0] for key in keys]
        joined = torch.cat([tokens[key] for key in keys]) if len(keys) > 1 else tokens[keys[0]]
        distil = [batch[key].get("teacher") is not None for key in keys]
        if any(distil):
            features, merged = self.encoder.forward_with_distill(joined, sizes)
            maps = [m if d else None for m, d in zip(merged.split(sizes), distil, strict=True)]
        else:
            features = self.encoder.forward_features(joined, groups=sizes)
            maps = [None] * len(keys)
        return list(zip(features.split(sizes), maps, strict=True))

    def _entry_loss(
        self,
        key: str,
        entry: Mapping[str, Any],
        features: torch.Tensor,
        merged: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cross = self._cross_flags(key, entry)
        if self.target == "pixels":
            loss, parts = self._pixel_loss(key, entry, features, cross)
        else:
            loss, parts = self._feature_loss(key, entry, features, cross)
        if "partner" in entry:
            parts[f"cross_rate/{key}"] = cross.float().mean()
        if merged is not None:
            cosine = distill_cosine(self.distill_head(merged), entry["teacher"])
            parts[f"cos/{key}"] = cosine.detach()
            loss = loss - self.distill_alpha * cosine
        return loss, parts

    def _pixel_loss(
        self, key: str, entry: Mapping[str, Any], features: torch.Tensor, cross: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SimMIM's masked L1 on pixels; cross samples decode the partner through D_j.

        Targets are standardised by their own sensor's stem (per-band statistics), so D_i
        predicts standardised pixels and the loss weighs every band and sensor alike.
        """
        image, sensor = entry["image"], entry.get("sensor", key)
        mask_px = pixel_mask(entry["mask"], image.shape[-1] // entry["mask"].shape[-1])
        stride = image.shape[-1] // features.shape[-1]
        target = self._module_for(self.embeds, sensor).standardize(image)
        groups = [("self", ~cross, sensor, patchify(target, stride))]
        if entry.get("cross") is not None:
            partner_sensor = entry["partner_sensor"]
            partner = self._module_for(self.embeds, partner_sensor).standardize(entry["partner"])
            groups.append(("cross", cross, partner_sensor, patchify(partner, stride)))
        return self._grouped_loss(
            key, features, groups, patchify(mask_px, stride), masked_l1_terms, "l1"
        )

    def _feature_loss(
        self, key: str, entry: Mapping[str, Any], features: torch.Tensor, cross: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """EVA-style: 1 − cos to the teacher's features of the masked mask cells."""
        if "teacher_cells" not in entry:
            raise KeyError(f"batch entry {key!r} lacks 'teacher_cells' (the model's target)")
        cells = entry["teacher_cells"]
        grid = cells.shape[-1]
        scale = grid // features.shape[-1]
        if scale < 1 or grid != scale * features.shape[-1]:
            raise ValueError(
                f"entry {key!r}: teacher cell grid {grid} is not a multiple of the final "
                f"feature grid {features.shape[-1]}"
            )
        mask = entry["mask"]
        if mask.shape[-1] % grid:
            raise ValueError(f"entry {key!r}: token mask {mask.shape[-1]} not divisible by {grid}")
        # The mask is drawn on the cell grid (validated geometry), so each block is uniform.
        mask_cells = F.avg_pool2d(mask.float()[:, None], mask.shape[-1] // grid)
        groups = [("self", ~cross, entry.get("sensor", key), patchify(cells, scale))]
        if entry.get("cross") is not None:
            if "partner_teacher_cells" not in entry:
                raise KeyError(f"entry {key!r} has cross flags but no 'partner_teacher_cells'")
            partner = patchify(entry["partner_teacher_cells"], scale)
            groups.append(("cross", cross, entry["partner_sensor"], partner))
        return self._grouped_loss(
            key, features, groups, patchify(mask_cells, scale), masked_cosine_terms, "feat"
        )

    def _grouped_loss(
        self,
        key: str,
        features: torch.Tensor,
        groups: list[tuple[str, torch.Tensor, str, torch.Tensor]],
        mask_patches: torch.Tensor,
        terms: LossTerms,
        label: str,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Decode every final token per (name, selected, decoder sensor, patchified target)
        group and weigh its loss by mask × selected; ``terms`` gives (numerator, denominator).

        Weights, not indexing, keep every shape static (see the module doc); tokens and
        samples a group does not select add exactly 0 to both sums. A group that selects no
        sample reports 0 (0 / ε), so every step logs the same metric names on every rank.
        """
        tokens = features.permute(0, 2, 3, 1).flatten(0, 2)  # (B·h·w, C_enc)
        masks = mask_patches.flatten(0, 2)  # (B·h·w, 1, s, s)
        numerator = features.new_zeros(())
        denominator = features.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, selected, target_sensor, target in groups:
            weight = _token_weights(selected, mask_patches.shape[1:3]).to(masks.dtype)
            decoder = self._module_for(self.decoders, target_sensor)
            pred = decoder.forward_tokens(tokens)
            num, den = terms(pred, target.flatten(0, 2), masks * weight[:, None, None, None])
            numerator, denominator = numerator + num, denominator + den
            parts[f"{label}/{key}/{name}"] = (num / (den + L1_EPS)).detach()
        loss = numerator / (denominator + L1_EPS)
        parts[f"{label}/{key}"] = loss.detach()
        return loss, parts

    def _cross_flags(self, key: str, entry: Mapping[str, Any]) -> torch.Tensor:
        """Per-sample bool: reconstruct the partner? All False without a partner (Eq. 2)."""
        batch_size = entry["image"].shape[0]
        cross = entry.get("cross")
        if cross is None:
            return torch.zeros(batch_size, dtype=torch.bool, device=entry["image"].device)
        if "partner" not in entry or "partner_sensor" not in entry:
            raise KeyError(f"entry {key!r} has 'cross' flags but no 'partner'/'partner_sensor'")
        cross = torch.as_tensor(cross, device=entry["image"].device).bool()
        if cross.shape != (batch_size,):
            raise ValueError(
                f"entry {key!r}: cross must be ({batch_size},), got {tuple(cross.shape)}"
            )
        partner = entry["partner"]
        if partner.shape[0] != batch_size or partner.shape[-2:] != entry["image"].shape[-2:]:
            raise ValueError(
                f"entry {key!r}: partner {tuple(partner.shape)} does not pair with image "
                f"{tuple(entry['image'].shape)}"
            )
        return cross


def _token_weights(selected: torch.Tensor, grid: torch.Size) -> torch.Tensor:
    """Per-sample flags (B,) → one flag per final token (B·h·w,), in ``flatten(0, 2)`` order."""
    return selected[:, None, None].expand(-1, *grid).flatten()


def _same_grid(tokens: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Entry keys grouped by token grid (h, w, C), in batch order: one trunk pass per group."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, grid in tokens.items():
        groups.setdefault(tuple(grid.shape[1:]), []).append(key)
    return list(groups.values())
