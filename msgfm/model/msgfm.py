"""The msGFM pretraining model: per-sensor stems, one shared encoder, per-sensor decoders.

``MsGFM.forward(batch)`` takes one step's heterogeneous batch (SPEC §3): a mapping from an
*entry name* (a data source, e.g. ``"sen12ms_s2"``) to a dict

- ``image``  (B, C_i, H, W) normalised float; ``mask`` (B, H/4, W/4) SimMIM token mask;
- ``sensor`` the sensor name selecting f_i and D_i (defaults to the entry name; separate from
  the entry name because two sources may share a sensor: GeoPile RGB and MDAS RGB);
- optional ``band_valid`` (B, C_i) validity of the input's bands;
- optional ``partner`` (B, C_j, H, W), ``partner_sensor`` j and ``cross`` (B,) bool: samples
  flagged ``cross`` reconstruct the partner image through D_j (paper Eq. 1) with their *own*
  mask, the others reconstruct themselves through D_i (Eq. 2);
- optional ``teacher`` (B, D_t) frozen-teacher features for GFM-style distillation (Table 5).

Each entry goes through the encoder in its own pass, as the paper loads the sensors one after
another (§3.4): MoE capacity and batch-prioritised routing then act within one sensor's batch.
Inside an entry, the encoder runs once on the whole batch; the features are split into the
self and cross groups and each group goes through its own decoder, so nothing is decoded twice,
and only the final-stage tokens that cover masked pixels are decoded: visible pixels carry no
loss, and at 192 px this skips 14 of 36 tokens of the largest matmul in the step.
The entry's loss is SPEC §2's masked L1 generalised to groups with different channel counts,
``Σ_g Σ|pred−target|·m / C_g / (Σ_g Σ m + 1e-5)``, which is exactly SPEC's formula when all
samples share one target, and weighs every masked pixel of the batch equally otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msgfm.model.decoder import PixelDecoder
from msgfm.model.encoder import SwinEncoder
from msgfm.model.masking import apply_mask_token, pixel_mask
from msgfm.model.patch_embed import SensorPatchEmbed

L1_EPS = 1e-5


def masked_l1_terms(
    pred: torch.Tensor, target: torch.Tensor, mask_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ|pred−target|·m / C, Σ m): numerator and denominator of SPEC's masked L1.

    Channels are dim 1 both for whole images (B, C, H, W) and for patches (n, C, s, s).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    numerator = ((pred - target).abs() * mask_px).sum() / target.shape[1]
    return numerator, mask_px.sum()


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
    """SPEC §2: sum(|pred−target|·mask) / (sum(mask) + 1e-5) / C_target, mask (B, 1, H, W)."""
    numerator, denominator = masked_l1_terms(pred, target, mask_px)
    return numerator / (denominator + L1_EPS)


def patchify(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, H/size, W/size, C, size, size): the pixels under each final token."""
    b, c, h, w = images.shape
    return images.view(b, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5)


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
    """GFM's objective (SPEC §4): masked L1 − α·cos(student, teacher)."""
    return recon_l1 - alpha * distill_cosine(student, teacher)


class DistillHead(nn.Module):
    """Student stage-3 map (B, h, w, C) → average pool → Linear(C, D_teacher)."""

    def __init__(self, in_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, teacher_dim)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        return self.proj(merged.mean(dim=(1, 2)))


class MsGFM(nn.Module):
    """SimMIM pretraining over several sensors with cross-sensor targets and MoE aux loss."""

    def __init__(
        self,
        embeds: Mapping[str, SensorPatchEmbed],
        encoder: SwinEncoder,
        decoders: Mapping[str, PixelDecoder],
        *,
        aux_weight: float = 0.01,
        distill_head: DistillHead | None = None,
        distill_alpha: float = 1.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if set(embeds) != set(decoders):
            raise ValueError(f"embeddings {sorted(embeds)} and decoders {sorted(decoders)} differ")
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
        """Norms, biases, relative position bias tables and the mask token (SPEC §3)."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim <= 1
            or name.endswith("bias")
            or "relative_position_bias_table" in name
            or name == "mask_token"
        }

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
        for key, entry in batch.items():
            entry_loss, aux_term, parts = self._entry_loss(key, entry)
            total = total + float(weights.get(key, 1.0)) * entry_loss
            aux = aux + aux_term
            components.update(parts)
        components["aux"] = aux.detach()
        total = total + self.aux_weight * aux
        components["loss"] = total.detach()
        return total, components

    def _entry_loss(
        self, key: str, entry: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        for required in ("image", "mask"):
            if required not in entry:
                raise KeyError(f"batch entry {key!r} lacks {required!r}")
        sensor = entry.get("sensor", key)
        image, mask = entry["image"], entry["mask"]
        tokens = self.embed(image, sensor, mask, entry.get("band_valid"))
        teacher = entry.get("teacher")
        if teacher is not None:
            if self.distill_head is None:
                raise ValueError(
                    f"entry {key!r} has teacher features but the model has no distill head "
                    "(set distill.dim)"
                )
            features, merged = self.encoder.forward_with_distill(tokens)
        else:
            features = self.encoder.forward_features(tokens)
        aux = self.encoder.aux_loss()
        mask_px = pixel_mask(mask, image.shape[-1] // mask.shape[-1])
        stride = image.shape[-1] // features.shape[-1]
        mask_patches = patchify(mask_px, stride)  # (B, h, w, 1, s, s)
        needed = mask_patches.flatten(3).amax(dim=3) > 0  # final tokens covering masked pixels
        tokens_out = features.permute(0, 2, 3, 1)

        cross = self._cross_flags(key, entry)
        groups = [("self", ~cross, sensor, image)]
        if bool(cross.any()):
            groups.append(("cross", cross, entry["partner_sensor"], entry["partner"]))
        numerator = features.new_zeros(())
        denominator = features.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, selected, target_sensor, target in groups:
            if not bool(selected.any()):
                continue
            chosen = needed & selected[:, None, None]
            decoder = self._module_for(self.decoders, target_sensor)
            pred = decoder.forward_tokens(tokens_out[chosen])
            num, den = masked_l1_terms(pred, patchify(target, stride)[chosen], mask_patches[chosen])
            numerator, denominator = numerator + num, denominator + den
            parts[f"l1/{key}/{name}"] = (num / (den + L1_EPS)).detach()
        loss = numerator / (denominator + L1_EPS)
        parts[f"l1/{key}"] = loss.detach()
        if "partner" in entry:
            parts[f"cross_rate/{key}"] = cross.float().mean()
        if teacher is not None:
            cosine = distill_cosine(self.distill_head(merged), teacher)
            parts[f"cos/{key}"] = cosine.detach()
            loss = loss - self.distill_alpha * cosine
        return loss, aux, parts

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
