"""Seeded training subsets (1 %, 10 %, 100 % of BigEarthNet's train split).

The reference code samples with replacement, so a "10 %" subset holds duplicates and fewer
distinct images. Here a subset is drawn *without replacement* from one seeded permutation per
(task, seed): the first ⌈f·N⌉ sample ids in that order. Subsets of one seed are therefore nested
(1 % ⊂ 10 %), so a fraction's effect is not confounded with a different draw; another seed is
another draw. Each subset is written as a file (one sample id a line) by its own workflow job
and reused by every init's finetuning, so all rows of a table cell see the same samples.
Torch-free on purpose: the subset job should not pay for importing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msgfm.data.shards import ShardSet
from msgfm.errors import DataError
from msgfm.files import write_text_atomic
from msgfm.plan import fraction_label

# Mixed into the permutation's seed so a subset draw never equals another seeded stream.
_SUBSET_STREAM = 0x5B5E7


def subset_file(root: str | Path, task: str, fraction: float, seed: int) -> Path:
    """The subset list of (task, fraction, seed) under ``root`` (``<results>/finetune/subsets``)."""
    return Path(root) / task / f"frac{fraction_label(fraction)}_seed{seed}.txt"


def draw_subset(sample_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """⌈fraction·N⌉ ids without replacement; nested across fractions for one seed."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = sorted(sample_ids)  # independent of the index's row order
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids are not unique; a subset would hold duplicates")
    count = max(1, math.ceil(fraction * len(ids) - 1e-9))
    order = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(len(ids))
    return [ids[i] for i in order[:count]]


def write_subset(shards: str | Path, out: str | Path, fraction: float, seed: int) -> Path:
    """Draw a training subset of a task's shard set and write its ids, one per line."""
    shardset = ShardSet(shards).split("train")
    chosen = draw_subset(list(shardset.index["sample_id"]), fraction, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# training subset of {Path(shards).name}: fraction {fraction_label(fraction)}, "
        f"seed {seed}, {len(chosen)} of {len(shardset)} train samples, without replacement\n"
    )
    return write_text_atomic(out, header + "".join(f"{sample_id}\n" for sample_id in chosen))


def read_subset(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "subset file missing; the finetune_subset rule writes it")
    ids = [line.strip() for line in path.read_text().splitlines()]
    ids = [line for line in ids if line and not line.startswith("#")]
    if not ids:
        raise DataError(path, "subset file lists no sample ids")
    return ids


def train_split(shards: str | Path, subset: str | Path | None = None) -> ShardSet:
    """The training split, restricted to a subset file's ids when one is given."""
    train = ShardSet(shards).split("train")
    if subset is None:
        return train
    ids = read_subset(subset)
    present = train.index["sample_id"].isin(ids).to_numpy()
    missing = len(set(ids)) - int(present.sum())
    if missing:
        raise DataError(
            Path(subset),
            f"{missing} listed id(s) are not in the train split of {shards}; the shard set was "
            "re-tiled after the subset was drawn: delete the subset file to redraw it",
        )
    return train.subset(present)
