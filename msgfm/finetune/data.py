"""Downstream task data for finetuning (paper §4.2, Table 2) over the tiled shard sets.

Each task reads ``<results>/shards/downstream/<task>`` and yields ``{"inputs": {role: (C, H, W)},
"target": ...}`` at the shard set's native sizes; :class:`msgfm.finetune.model.FinetuneModel`
resizes the inputs to the encoder's size and predicts at the target's size, so regression and
segmentation metrics are computed at the datasets' own resolution.

Decisions recorded here because the paper is silent:
- **Scaling.** Sentinel-2, SAR, IRRG and DSM get their sensor normalisation
  (:func:`msgfm.data.loader.to_tensor`; S2 and the cloud-free S2 target are reflectance/10000
  clipped to [0, 1]). SpaceNet2's 11-bit MUL, PAN and pan-sharpened target are divided by 2047
  and clipped to [0, 1], so PSNR/SSIM use a data range of 1.
- **data_size** (demo only): resamples every image and dense target to a small side first
  (bilinear, antialiased; nearest for class maps), so a CPU can finetune the dense tasks in
  seconds; the paper config leaves it unset.
- **Subsets**: see :mod:`msgfm.finetune.subsets` (seeded, without replacement, nested).
- **Augmentation** (training only): a horizontal and a vertical flip, each with probability 0.5,
  applied to every input and to a spatial target alike, drawn from (seed, epoch, sample) so
  that a resumed run sees the same flips.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from msgfm.data.loader import to_tensor
from msgfm.data.registry import DATASETS, TaskSpec
from msgfm.data.shards import ShardSet
from msgfm.errors import DataError

SPACENET_MAX_VALUE = 2047.0  # WorldView-3 MUL/PAN are 11-bit values stored as uint16
_SPACENET_ROLES = frozenset({"mul", "pan", "pansharpened"})


# The downstream tasks as the registry declares them (msgfm.data.registry.TaskSpec).
TASKS: dict[str, TaskSpec] = {
    name: spec.task for name, spec in DATASETS.items() if spec.task is not None
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise KeyError(f"unknown downstream task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def with_sensors(spec: TaskSpec, sensors: Sequence[str] | None) -> TaskSpec:
    """The task fed only some of its sensors, in its own stacking order (paper §4.3, Fig. 4:
    BigEarthNet from S2 or SAR alone, cloud removal from SAR or the cloudy S2 alone); None or
    empty = every input of the task."""
    if not sensors:
        return spec
    unknown = sorted(set(sensors) - set(spec.sensors))
    if unknown:
        raise ValueError(
            f"task {spec.name} cannot be fed {unknown}: its sensors are {list(spec.sensors)}"
        )
    return replace(spec, inputs=tuple(pair for pair in spec.inputs if pair[1] in sensors))


def role_tensor(role: str, array: np.ndarray) -> torch.Tensor:
    """One role's raw row as the model sees it (see the module docstring for the scalings)."""
    if role in _SPACENET_ROLES:
        scaled = np.clip(np.asarray(array, dtype=np.float32) / SPACENET_MAX_VALUE, 0.0, 1.0)
        return torch.from_numpy(scaled)
    return to_tensor(role, array)


def resample(image: torch.Tensor, size: int, *, nearest: bool = False) -> torch.Tensor:
    """(C, H, W) → (C, size, size); a no-op at that size."""
    if image.shape[-2:] == (size, size):
        return image
    if nearest:
        out = F.interpolate(image[None].float(), size=(size, size), mode="nearest")
        return out[0].to(image.dtype)
    out = F.interpolate(
        image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]


class TaskDataset(Dataset):
    """One split of a downstream task as ``{"inputs": {role: image}, "target": tensor}``.

    ``augment`` turns on the seeded flips; call ``set_epoch`` before each epoch (workers pick
    the epoch up when they start, so do not use persistent workers).
    """

    def __init__(
        self,
        spec: TaskSpec,
        shardset: ShardSet,
        *,
        augment: bool,
        seed: int = 0,
        data_size: int | None = None,
    ) -> None:
        roles = [role for role, _ in spec.inputs] + [spec.target]
        missing = [role for role in roles if role not in shardset.roles]
        if missing:
            raise DataError(
                shardset.path,
                f"task {spec.name} needs roles {missing}, the shard set holds {shardset.roles}",
            )
        self.spec, self.shardset, self.data_size = spec, shardset, data_size
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.roles = roles

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shardset)

    def __getitem__(self, i: int) -> dict[str, object]:
        arrays = self.shardset.get(i, self.roles)
        inputs = {role: role_tensor(role, arrays[role]) for role, _ in self.spec.inputs}
        target = role_tensor(self.spec.target, arrays[self.spec.target])
        if self.data_size:
            inputs = {role: resample(image, self.data_size) for role, image in inputs.items()}
            if self.spec.kind != "classification":
                nearest = self.spec.kind == "segmentation"
                target = resample(target, self.data_size, nearest=nearest)
        if self.spec.kind == "classification":
            target = target.float()
        elif self.spec.kind == "segmentation":
            target = target[0]  # (H, W) int64 class indices
        if self.augment:
            inputs, target = self._flip(i, inputs, target)
        return {"inputs": inputs, "target": target}

    def _flip(
        self, i: int, inputs: dict[str, torch.Tensor], target: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        horizontal, vertical = np.random.default_rng([self.seed, self.epoch, i]).random(2) < 0.5
        dims = [d for d, flip in ((-1, horizontal), (-2, vertical)) if flip]
        if not dims:
            return inputs, target
        inputs = {role: torch.flip(image, dims) for role, image in inputs.items()}
        if self.spec.kind != "classification":
            target = torch.flip(target, dims)
        return inputs, target


class EpochBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch order, split over ranks, resumable mid-epoch.

    The epoch's permutation depends on (seed, epoch) only; it is padded by wrapping around to a
    multiple of ``world_size`` (as torch's DistributedSampler does) so every rank runs the same
    number of steps, and rank r takes positions r, r + world_size, ... The last batch may be
    smaller: with 1 % of a small training set, dropping it could leave no step at all.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"need size >= 1 and batch_size >= 1, got {size} and {batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = -(-size // world_size)
        self.steps_per_epoch = -(-self.per_rank // batch_size)
        self.epoch, self.start_step = 0, 0

    @property
    def batch_sizes(self) -> dict[str, int]:
        """The per-rank batch by source, as MultiSourceBatchSampler has it (one: the task's)."""
        return {"train": self.batch_size}

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        padded = np.resize(order, self.per_rank * self.world_size)
        mine = padded[self.rank :: self.world_size]
        for step in range(self.start_step, self.steps_per_epoch):
            yield [int(i) for i in mine[step * self.batch_size : (step + 1) * self.batch_size]]


def collate(items: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Stack ``inputs`` per role and the targets."""
    roles = items[0]["inputs"]
    return {
        "inputs": {r: torch.stack([item["inputs"][r] for item in items]) for r in roles},
        "target": torch.stack([item["target"] for item in items]),
    }
