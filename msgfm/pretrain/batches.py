"""From one step's multi-source batch to the model's entries: masks, cross flags, weights.

Every random choice made here (each image's SimMIM mask, whether a paired image reconstructs
its partner) is drawn from a generator seeded by the *sample* (seed, epoch, source, row,
purpose), not from global state or the batch layout. So a run resumed from a checkpoint draws
exactly what the interrupted run would have drawn, and a sample gets the same mask whether it
is trained on one process or on one of several DDP ranks.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from msgfm.data.loader import ROLE_SENSORS
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


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a tensor drawn on the host to ``device`` without making the host wait.

    A copy from pageable memory to a GPU blocks until the kernels queued before it have run;
    from pinned (page-locked) memory it is queued behind them and the host runs ahead to the
    next step. The CUDA caching host allocator keeps the pinned buffer alive until the copy is
    done. On the CPU nothing is copied.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def make_entries(
    step_batch: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    mask_generator: MaskGenerator,
    cross_rate: float,
    seed: int,
    epoch: int,
    weights: Mapping[str, float],
    device: torch.device,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """One model entry per (source, sensor): independent masks per sensor (paper App. B.1).

    A paired source (SEN12MS: SAR + S2; MDAS: RGB + DSM) gives two entries, each the other's
    partner; each sample draws ``cross`` with probability ``cross_rate`` (the unit of the draw
    is the sample, our documented choice). An unpaired source reconstructs itself (Eq. 2).
    """
    entries: dict[str, dict[str, Any]] = {}
    entry_weights: dict[str, float] = {}
    for source in sorted(step_batch):
        roles = step_batch[source]
        rows = [int(row) for row in roles["row"]]
        sensors = sensor_roles(list(roles))
        if len(sensors) > 2:
            raise ValueError(f"source {source!r} holds {sensors}: at most a pair is supported")
        for sensor in sensors:
            masks = [
                mask_generator(sample_generator(seed, epoch, source, row, f"mask/{sensor}"))
                for row in rows
            ]
            entry: dict[str, Any] = {
                "image": roles[sensor].to(device, non_blocking=True),
                "sensor": sensor,
                "mask": host_to_device(torch.stack(masks), device),
            }
            partners = [other for other in sensors if other != sensor]
            if partners:
                partner = partners[0]
                draws = [
                    torch.rand(
                        1, generator=sample_generator(seed, epoch, source, r, f"cross/{sensor}")
                    )
                    for r in rows
                ]
                cross = torch.cat(draws) < cross_rate
                entry.update(
                    partner=roles[partner].to(device, non_blocking=True),
                    partner_sensor=partner,
                    cross=host_to_device(cross, device),
                )
            key = f"{source}/{sensor}"
            entries[key] = entry
            entry_weights[key] = weights[source]
    return entries, entry_weights
