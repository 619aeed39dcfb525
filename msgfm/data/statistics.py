"""Per-band statistics of what a model is fed, for the stems to standardise with.

The stems (:mod:`msgfm.model.patch_embed`) standardise each band with a fixed mean and spread
that they store, so the numbers travel inside ``encoder.pt``. They come from the data the stem
is trained on: pretraining measures its shard sets (every source that feeds a sensor), and
finetuning measures the task's training split for a stem that brings none of its own (random
init, a stem derived for WorldView-3, ImageNet-22k's). Statistics are taken over the model's
input, i.e. after the data layer's normalisation (``to_tensor``/``role_tensor``), over at most
``limit`` evenly spaced rows per set: a second's work on millions of tiles, and the same rows
on every rank and every resume. Bands a set marks invalid (BigEarthNet's B10) are left out of
that set's sums; a band no set has gets mean 0, std 1 (the stem keeps it at zero).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from msgfm.data.shards import ShardSet

DEFAULT_ROW_LIMIT = 512


def spaced_rows(count: int, limit: int = DEFAULT_ROW_LIMIT) -> np.ndarray:
    """At most ``limit`` row indices spread evenly over ``count`` rows (all when fewer)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def role_statistics(
    sets: Sequence[ShardSet],
    role: str,
    to_tensor: Callable[[str, np.ndarray], torch.Tensor],
    limit: int = DEFAULT_ROW_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and standard deviation of ``role`` over ``sets`` (module docstring).

    ``to_tensor(role, raw_row)`` is the job's own conversion, so the statistics are those of
    the tensors the stem receives.
    """
    sums = None  # per band: pixel count, sum, sum of squares
    for shardset in sets:
        valid = shardset.meta.get("valid_bands", {}).get(role)
        for row in spaced_rows(len(shardset), limit):
            pixels = to_tensor(role, shardset.get(int(row), [role])[role]).double().flatten(1)
            use = torch.ones(len(pixels), dtype=torch.float64)
            if valid is not None:
                use = torch.as_tensor(valid, dtype=torch.float64)
            count = torch.full_like(use, pixels.shape[1])
            part = torch.stack([count, pixels.sum(1), (pixels**2).sum(1)]) * use
            sums = part if sums is None else sums + part
    if sums is None:
        raise ValueError(f"no rows to measure role {role!r} in {[str(s.path) for s in sets]}")
    count, total, squares = sums
    seen = count > 0
    mean = torch.where(seen, total / count.clamp_min(1), torch.zeros_like(total))
    variance = torch.where(seen, squares / count.clamp_min(1) - mean**2, torch.ones_like(total))
    return mean.float(), variance.clamp_min(0).sqrt().float()
