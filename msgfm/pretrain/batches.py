"""From one step's multi-source batch to the model's entries: masks, cross flags, weights.

Every random choice (each image's SimMIM mask, whether a paired image reconstructs its
partner) is drawn by :class:`SampleDraws` from a generator seeded by the *sample* (seed,
epoch, source, row, purpose), not from global state or the batch layout. So a run resumed
from a checkpoint draws exactly what the interrupted run would have drawn, a sample gets the
same mask whether it is trained on one process or on one of several DDP ranks, and the draws
can be made in the DataLoader workers (msgfm.data.loader.MultiSourceDataset), in parallel
and ahead of the step, instead of by the training process between steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from msgfm.data.loader import ROLE_SENSORS
from msgfm.data.normalize import normalize
from msgfm.model.masking import MaskGenerator


@dataclass(frozen=True)
class SourceSpec:
    """A pretraining source: the shard sets it reads, its per-rank batch size and its LR.

    Paper Table 10: RGB (GeoPile + MillionAID) 128 at 1e-4, SEN12MS 32 at 0.25e-4, MDAS 12 at
    1e-5 per GPU.
    """

    name: str
    datasets: tuple[str, ...]
    batch_size: int
    lr: float


def sample_generator(seed: int, epoch: int, source: str, row: int, purpose: str) -> torch.Generator:
    """A generator owned by one draw of one sample (crc32, not hash(): str hashes are salted)."""
    key = zlib.crc32(f"{seed}/{epoch}/{source}/{row}/{purpose}".encode())
    return torch.Generator().manual_seed(key)


def loss_weights(sources: Sequence[SourceSpec]) -> dict[str, float]:
    """Per-source loss weight lr_source / lr_max on the shared encoder (see msgfm.train.optim)."""
    top = max(spec.lr for spec in sources)
    return {spec.name: spec.lr / top for spec in sources}


def sensor_lr_scales(
    sources: Sequence[SourceSpec], sensors_by_source: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """``lr_scale`` per sensor-specific module prefix: the fastest LR of the sources using it.

    The RGB stem and decoder serve GeoPile/MillionAID and MDAS, so they train at the RGB rate;
    SAR and S2 only see SEN12MS, DSM only MDAS.
    """
    top = max(spec.lr for spec in sources)
    best: dict[str, float] = {}
    for spec in sources:
        for sensor in sensors_by_source[spec.name]:
            best[sensor] = max(best.get(sensor, 0.0), spec.lr / top)
    scales: dict[str, float] = {}
    for sensor, scale in best.items():
        scales[f"embeds.{sensor}."] = scale
        scales[f"decoders.{sensor}."] = scale
    return scales


def sensor_roles(roles: Sequence[str]) -> list[str]:
    """The roles of a shard set that are sensor images (pretraining shards hold nothing else)."""
    return [role for role in roles if ROLE_SENSORS.get(role) == role]


@dataclass(frozen=True)
class SampleDraws:
    """One sample's random choices by name: ``mask/<sensor>`` for each sensor image and, for a
    paired source, ``cross/<sensor>`` (reconstruct the partner? with probability
    ``cross_rate``; the unit of the draw is the sample, our documented choice)."""

    mask_generator: MaskGenerator
    cross_rate: float
    seed: int

    def __call__(
        self, source: str, row: int, epoch: int, roles: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        sensors = sensor_roles(roles)
        out = {}
        for sensor in sensors:
            generator = sample_generator(self.seed, epoch, source, row, f"mask/{sensor}")
            out[f"mask/{sensor}"] = self.mask_generator(generator)
            if len(sensors) > 1:
                generator = sample_generator(self.seed, epoch, source, row, f"cross/{sensor}")
                out[f"cross/{sensor}"] = torch.rand((), generator=generator) < self.cross_rate
        return out

    def add_to(
        self, step_batch: Mapping[str, Mapping[str, torch.Tensor]], epoch: int
    ) -> dict[str, dict[str, torch.Tensor]]:
        """A collated batch with its samples' draws, as the workers would have added them
        (for batches built without the dataset: benchmarks, tests)."""
        out = {}
        for source, roles in step_batch.items():
            draws = [self(source, int(row), epoch, list(roles)) for row in roles["row"]]
            stacked = {name: torch.stack([d[name] for d in draws]) for name in draws[0]}
            out[source] = {**roles, **stacked}
        return out


def make_entries(
    step_batch: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    weights: Mapping[str, float],
    device: torch.device,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """One model entry per (source, sensor): independent masks per sensor (paper App. B.1).

    A paired source (SEN12MS: SAR + S2; MDAS: RGB + DSM) gives two entries, each the other's
    partner, each sample reconstructing the partner where its ``cross`` draw says so; an
    unpaired source reconstructs itself (Eq. 2). Images arrive as stored and are normalised
    on the device, once per sensor even where an image is also the partner's target. The
    batch's tensors come pinned from the DataLoader on a GPU, so every copy here is queued
    behind the running kernels and the host never waits for them.
    """
    entries: dict[str, dict[str, Any]] = {}
    entry_weights: dict[str, float] = {}
    for source in sorted(step_batch):
        roles = step_batch[source]
        sensors = sensor_roles(list(roles))
        if len(sensors) > 2:
            raise ValueError(f"source {source!r} holds {sensors}: at most a pair is supported")
        images = {
            sensor: normalize(sensor, roles[sensor].to(device, non_blocking=True))
            for sensor in sensors
        }
        for sensor in sensors:
            entry: dict[str, Any] = {
                "image": images[sensor],
                "sensor": sensor,
                "mask": roles[f"mask/{sensor}"].to(device, non_blocking=True),
            }
            partners = [other for other in sensors if other != sensor]
            if partners:
                entry.update(
                    partner=images[partners[0]],
                    partner_sensor=partners[0],
                    cross=roles[f"cross/{sensor}"].to(device, non_blocking=True),
                )
            key = f"{source}/{sensor}"
            entries[key] = entry
            entry_weights[key] = weights[source]
    return entries, entry_weights
