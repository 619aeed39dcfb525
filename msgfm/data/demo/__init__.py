"""Generated demo datasets: all eight datasets of the paper, small, in their real layouts.

The demo is the embedded default of the workflow and of the tests: the same readers, tilers
and training code run on it as on the real archives, so what works here works there. Each
dataset gets its own random stream derived from one seed, so regenerating one dataset does
not change the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msgfm.data.registry import DATASETS

log = logging.getLogger(__name__)

# Every dataset of the registry, in its order: each one's random stream is seeded by its position.
DEMO_DATASETS: tuple[str, ...] = tuple(DATASETS)


def write_demo(
    data_root: str | Path, *, seed: int = 0, datasets: Sequence[str] | None = None
) -> dict[str, float]:
    """Write the demo datasets under ``data_root/<dataset>/`` and mark each one ready (each
    dataset's writer is its registry entry's ``demo_writer``).

    The ready marker is written last, exactly as after a real download, so the workflow
    treats generated and downloaded data alike. Returns seconds spent per dataset.
    """
    from msgfm.data.marker import write_ready_marker

    data_root = Path(data_root)
    chosen = list(datasets) if datasets else list(DEMO_DATASETS)
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        raise KeyError(f"unknown demo dataset(s) {unknown}; expected some of {DEMO_DATASETS}")
    timings: dict[str, float] = {}
    for dataset in chosen:
        start = time.perf_counter()
        folder = data_root / dataset
        rng = np.random.default_rng([seed, DEMO_DATASETS.index(dataset)])
        DATASETS[dataset].write_demo(folder, rng)
        write_ready_marker(folder, dataset, origin=f"demo (seed {seed})")
        timings[dataset] = round(time.perf_counter() - start, 3)
        log.info("demo %s written to %s in %.1f s", dataset, folder, timings[dataset])
    return timings
