"""torch datasets and samplers over shard sets, for finetuning and multi-source pretraining.

Pretraining (paper §3.2, Table 10) sees one batch of EVERY source per optimisation step, with
per-source batch sizes. :class:`MultiSourceBatchSampler` makes that deterministic and
distributed: each source gets its own seeded permutation per epoch (identical on every rank),
global step ``s`` takes the next ``batch × world_size`` indices of it, and rank ``r`` takes its
``r``-th slice, so ranks are disjoint and together form the global batch. With batch sizes
proportional to the source sizes (:func:`balanced_batch_sizes`) all sources run out together,
so an epoch iterates every source's data once.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from msgfm.data.normalize import normalize
from msgfm.data.shards import ShardSet

# Which sensor's normalisation a role gets; roles not listed are passed through raw.
ROLE_SENSORS: dict[str, str] = {
    "rgb": "rgb",
    "s2": "s2",
    "s2_cloudy": "s2",
    "sar": "sar",
    "dsm": "dsm",
}
# Class-index maps: integer tensors, as cross-entropy with an ignore index expects.
INTEGER_ROLES = frozenset({"label"})

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def to_tensor(role: str, array: np.ndarray) -> torch.Tensor:
    """One role's raw shard row as a tensor: normalised float32 for sensors, raw otherwise.

    Always copies out of the memory map, so the tensor owns writable memory.
    """
    sensor = ROLE_SENSORS.get(role)
    if sensor is not None:
        return normalize(sensor, torch.from_numpy(np.array(array)))
    if role in INTEGER_ROLES:
        return torch.from_numpy(np.array(array, dtype=np.int64))
    return torch.from_numpy(np.array(array, dtype=np.float32))


class ShardDataset(Dataset):
    """Samples of one shard set (usually one split of a downstream task) as tensors by role."""

    def __init__(
        self, shardset: ShardSet, roles: Sequence[str], transform: Transform | None = None
    ) -> None:
        missing = [r for r in roles if r not in shardset.roles]
        if missing:
            raise KeyError(f"{shardset.path}: roles {missing} not in the set's {shardset.roles}")
        self.shardset = shardset
        self.roles = tuple(roles)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.shardset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        arrays = self.shardset.get(i, self.roles)
        sample = {role: to_tensor(role, array) for role, array in arrays.items()}
        return self.transform(sample) if self.transform else sample


def balanced_batch_sizes(source_sizes: Mapping[str, int], total_batch: int) -> dict[str, int]:
    """Split ``total_batch`` over sources proportionally to their size (largest remainder).

    Every source gets at least 1. Proportional batches make ``size / batch`` nearly equal for
    all sources, so they are exhausted at the same step.
    """
    if total_batch < len(source_sizes):
        raise ValueError(f"total_batch {total_batch} < number of sources {len(source_sizes)}")
    if any(size < 1 for size in source_sizes.values()):
        raise ValueError(f"every source needs at least one sample: {dict(source_sizes)}")
    total = sum(source_sizes.values())
    quota = {s: total_batch * n / total for s, n in source_sizes.items()}
    sizes = {s: max(1, int(q)) for s, q in quota.items()}
    while sum(sizes.values()) < total_batch:  # largest remainder first
        s = max(quota, key=lambda k: (quota[k] - sizes[k], k))
        sizes[s] += 1
    while sum(sizes.values()) > total_batch:  # only when the minimum of 1 overshoots
        s = min((k for k in sizes if sizes[k] > 1), key=lambda k: (quota[k] - sizes[k], k))
        sizes[s] -= 1
    return sizes


def _source_key(source: str) -> int:
    """A stable integer per source name (Python's hash() is salted per process)."""
    return zlib.crc32(source.encode())


class MultiSourceBatchSampler(Sampler[list[tuple[str, int, int]]]):
    """Yields, per step, this rank's batch of every source as (source, row, epoch) keys.

    The epoch travels in the key because the sample's draws (flip, mask, cross flag) depend
    on it: persistent DataLoader workers, started once, then never need to be told it.

    ``batch_sizes`` are per-rank (paper Table 10 gives per-GPU sizes), so a source's global
    batch is ``batch_sizes[source] * world_size``. ``steps_per_epoch`` is the minimum over
    sources of ``size // global batch`` (or the ceiling with ``drop_last=False``, single
    process only), so no source repeats within an epoch. ``set_epoch(e, start_step=k)``
    reshuffles and, to resume mid-epoch, skips the first ``k`` steps.
    """

    def __init__(
        self,
        source_sizes: Mapping[str, int],
        batch_sizes: Mapping[str, int],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if set(source_sizes) != set(batch_sizes):
            raise ValueError(
                f"batch sizes for {sorted(batch_sizes)} but sources {sorted(source_sizes)}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if not drop_last and world_size > 1:
            raise ValueError(
                "drop_last=False would give ranks uneven (possibly empty) last batches, which "
                "desynchronises distributed training; use it in single-process runs only"
            )
        if any(b < 1 for b in batch_sizes.values()):
            raise ValueError(f"batch sizes must be >= 1: {dict(batch_sizes)}")
        self.source_sizes = dict(source_sizes)
        self.batch_sizes = {s: batch_sizes[s] for s in self.source_sizes}
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        steps = {}
        for source, size in self.source_sizes.items():
            global_batch = self.batch_sizes[source] * world_size
            steps[source] = size // global_batch if drop_last else -(-size // global_batch)
            if steps[source] == 0:
                raise ValueError(
                    f"source {source!r} has {size} samples, fewer than one global batch of "
                    f"{global_batch} ({self.batch_sizes[source]} x {world_size} ranks)"
                )
        self.steps_per_epoch = min(steps.values())
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation; ``start_step`` > 0 resumes a checkpointed epoch."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def permutation(self, source: str) -> np.ndarray:
        """The epoch's order of one source: a function of (seed, epoch, source) only."""
        rng = np.random.default_rng([self.seed, self.epoch, _source_key(source)])
        return rng.permutation(self.source_sizes[source])

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        orders = {source: self.permutation(source) for source in self.source_sizes}
        for step in range(self.start_step, self.steps_per_epoch):
            batch: list[tuple[str, int, int]] = []
            for source, order in orders.items():
                size = self.batch_sizes[source]
                start = (step * self.world_size + self.rank) * size
                batch.extend((source, int(row), self.epoch) for row in order[start : start + size])
            yield batch


# (source, row, epoch, sensor roles) → the sample's random draws by name (see MultiSourceDataset).
SampleDraws = Callable[[str, int, int, Sequence[str]], dict[str, torch.Tensor]]


class MultiSourceDataset(Dataset):
    """Pretraining samples addressed by (source, row, epoch), a source being one or more shard
    sets.

    A source such as "rgb" may concatenate several sets (GeoPile + MillionAID); they must
    hold the same roles. ``__getitem__`` returns ``(source, {role: tensor, "row": row})`` with
    every role *as stored* (uint8 RGB, uint16 Sentinel-2, float32 SAR/DSM): the step sends
    these bytes to the device and normalises them there (msgfm.data.normalize), a quarter of
    float32's bytes for RGB. With ``flip`` one horizontal flip is drawn from (seed, epoch,
    source, row) and applied to all roles, so a pair stays aligned and a run is reproducible.
    ``draws`` adds the sample's other random choices (SimMIM masks, cross flags:
    msgfm.pretrain.batches), so they are drawn in the DataLoader workers, not by the training
    process between steps. ``roles`` restricts what is read per source (a single-sensor
    pretraining variant reads SAR but not the S2 of the same SEN12MS rows); by default every
    role of the set.
    """

    def __init__(
        self,
        sets: Mapping[str, Sequence[ShardSet]],
        *,
        seed: int = 0,
        flip: bool = True,
        roles: Mapping[str, Sequence[str]] | None = None,
        draws: SampleDraws | None = None,
    ) -> None:
        self.sets = {source: list(group) for source, group in sets.items()}
        self.seed, self.flip, self.draws = seed, flip, draws
        self.roles: dict[str, tuple[str, ...]] = {}
        self._starts: dict[str, list[int]] = {}
        for source, group in self.sets.items():
            if not group:
                raise ValueError(f"source {source!r} has no shard sets")
            roles_held = set(group[0].roles)
            for other in group[1:]:
                if set(other.roles) != roles_held:
                    raise ValueError(
                        f"source {source!r}: {other.path} holds roles {sorted(other.roles)}, "
                        f"{group[0].path} holds {sorted(roles_held)}"
                    )
            wanted = tuple(roles[source]) if roles and source in roles else tuple(group[0].roles)
            unknown = sorted(set(wanted) - roles_held)
            if unknown or not wanted:
                raise ValueError(
                    f"source {source!r}: roles {list(wanted)} requested, {group[0].path} holds "
                    f"{sorted(roles_held)}"
                )
            self.roles[source] = wanted
            self._starts[source] = list(np.cumsum([0, *(len(s) for s in group)])[:-1])

    @property
    def sizes(self) -> dict[str, int]:
        """Samples per source, as :class:`MultiSourceBatchSampler` expects."""
        return {source: sum(len(s) for s in group) for source, group in self.sets.items()}

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def __getitem__(self, key: tuple[str, int, int]) -> tuple[str, dict[str, torch.Tensor]]:
        source, row, epoch = key
        starts = self._starts[source]
        part = bisect.bisect_right(starts, row) - 1
        shardset = self.sets[source][part]
        local = row - starts[part]
        if not 0 <= local < len(shardset) or row < 0:
            raise IndexError(f"row {row} outside source {source!r} of {self.sizes[source]} rows")
        arrays = shardset.get(local, self.roles[source])
        # np.array copies out of the memory map: the tensor owns writable memory.
        sample = {role: torch.from_numpy(np.array(a)) for role, a in arrays.items()}
        if self.flip and self._draw_flip(source, row, epoch):
            sample = {role: torch.flip(t, dims=(-1,)) for role, t in sample.items()}
        if self.draws is not None:
            sample.update(self.draws(source, row, epoch, self.roles[source]))
        # The row travels with the sample so that per-sample draws are seeded by the sample,
        # independent of batch layout and rank count.
        sample["row"] = torch.tensor(row, dtype=torch.int64)
        return source, sample

    def _draw_flip(self, source: str, row: int, epoch: int) -> bool:
        rng = np.random.default_rng([self.seed, epoch, _source_key(source), row])
        return bool(rng.random() < 0.5)


def collate_multisource(
    items: Sequence[tuple[str, dict[str, torch.Tensor]]],
) -> dict[str, dict[str, torch.Tensor]]:
    """Group one step's samples into ``{source: {role: (B, C, H, W) tensor}}``."""
    grouped: dict[str, list[dict[str, torch.Tensor]]] = {}
    for source, sample in items:
        grouped.setdefault(source, []).append(sample)
    return {
        source: {role: torch.stack([s[role] for s in samples]) for role in samples[0]}
        for source, samples in grouped.items()
    }
