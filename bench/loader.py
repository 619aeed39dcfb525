"""Benchmark: pretraining samples/s from memory-mapped shards vs per-sample GeoTIFF reads.

The point of tiling into shards is that the data loader stops decoding compressed GeoTIFFs
per sample (target: >= 10x). Both contestants produce the same model input for the same
SEN12MS samples: the 192 px centre crop of SAR and S2 as stored (NaN set to 0 dB; the step
normalises on the device). The GeoTIFF side is given its best shot: a windowed rasterio read
of just the crop. Both run single-process on a warm page cache, and the script checks that
they return identical tensors. The LAST line is the ratio.

Before it, the loader as training runs it: ``--workers`` DataLoader processes reading the
shards, flipping, drawing each sample's SimMIM masks and cross flags (msgfm.pretrain.batches)
and collating batches of 32 pairs, in samples/s per worker core. A GPU needs
``samples/s per GPU ÷ samples/s per worker`` cores for its workers (plus one for its own
process); the line prints that for ``--gpu-rate`` (default: estimate-cost's assumed rate).

    .venv/bin/python bench/loader.py                 # demo data in a temporary folder
    .venv/bin/python bench/loader.py --data-root data --samples 2000 --workers 8
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader

from msgfm.data.demo import write_demo
from msgfm.data.loader import (
    MultiSourceBatchSampler,
    MultiSourceDataset,
    collate_multisource,
)
from msgfm.data.readers.sen12ms import SEN12MS
from msgfm.data.shards import ShardSet
from msgfm.data.tiling.pretrain import tile_pretrain
from msgfm.model.masking import MaskGenerator
from msgfm.pretrain.batches import SampleDraws

TILE = 192


def read_geotiff_sample(files: dict[str, tuple[Path, ...]]) -> dict[str, torch.Tensor]:
    """One sample straight from its GeoTIFFs: what a loader without shards has to do."""
    sample = {}
    for role in ("sar", "s2"):
        with rasterio.open(files[role][0]) as src:
            top, left = (src.height - TILE) // 2, (src.width - TILE) // 2
            array = src.read(window=Window(left, top, TILE, TILE))
        if role == "sar":
            array[~np.isfinite(array)] = 0.0
        sample[role] = torch.from_numpy(array)  # as stored: the step normalises on the device
    return sample


def rate(get, keys: list, min_seconds: float) -> float:
    """Samples per second of ``get`` over ``keys``, cycling until ``min_seconds`` passed."""
    for key in keys[:4]:
        get(key)  # warm-up: page cache, memory maps, GDAL driver
    done, start = 0, time.perf_counter()
    while True:
        for key in keys:
            get(key)
        done += len(keys)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def worker_rate(shards: ShardSet, workers: int, min_seconds: float, batch: int = 32) -> float:
    """Samples/s of the pretraining DataLoader (persistent workers, masks drawn in them)."""
    draws = SampleDraws(MaskGenerator(TILE, 32, 4, 0.6), cross_rate=0.5, seed=0)
    dataset = MultiSourceDataset({"sen12ms": [shards]}, draws=draws)
    batch = min(batch, len(shards))
    sampler = MultiSourceBatchSampler(dataset.sizes, {"sen12ms": batch}, seed=0)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_multisource,
        num_workers=workers, persistent_workers=True, prefetch_factor=4,
    )  # fmt: skip
    for _ in loader:  # warm-up epoch: workers started, page cache and maps warm
        pass
    done, start, epoch = 0, time.perf_counter(), 1
    while time.perf_counter() - start < min_seconds:
        sampler.set_epoch(epoch)
        for step_batch in loader:
            done += len(step_batch["sen12ms"]["row"])
        epoch += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="real data root (default: demo data)")
    parser.add_argument("--samples", type=int, default=256, help="samples per pass (at most)")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per contestant")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers to time")
    parser.add_argument(
        "--gpu-rate", type=float, default=150.0, help="samples/s per GPU the workers must feed"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msgfm-bench-loader-") as tmp:
        tmp = Path(tmp)
        data_root = args.data_root
        if data_root is None:
            data_root = tmp / "data"
            write_demo(data_root, datasets=["sen12ms"])
        tile_pretrain("sen12ms", data_root, tmp / "shards", tile=TILE)
        shards = ShardSet(tmp / "shards")
        dataset = MultiSourceDataset({"sen12ms": [shards]}, flip=False)
        refs = {ref.sample_id: ref for ref in SEN12MS(data_root / "sen12ms").refs}
        rows = list(range(min(args.samples, len(shards))))
        files = [refs[shards.index["sample_id"][row]].files for row in rows]

        for row in rows[:8]:  # same samples, same tensors: the comparison is fair
            from_shards = dataset[("sen12ms", row, 0)][1]
            from_tiff = read_geotiff_sample(files[row])
            for role in ("sar", "s2"):
                if not torch.equal(from_shards[role], from_tiff[role]):
                    raise SystemExit(f"row {row} {role}: shards and GeoTIFF disagree")

        loader_rate = worker_rate(shards, args.workers, args.seconds)
        per_worker = loader_rate / args.workers
        cores = math.ceil(args.gpu_rate / per_worker)
        print(f"DataLoader, {args.workers} worker(s) drawing masks: {loader_rate:.1f} samples/s")
        print(f"per worker core: {per_worker:.1f} samples/s; a GPU at {args.gpu_rate:g} samples/s "
              f"needs {cores} worker core(s) + 1 for its own process")  # fmt: skip
        shard_rate = rate(lambda row: dataset[("sen12ms", row, 0)], rows, args.seconds)
        tiff_rate = rate(read_geotiff_sample, files, args.seconds)
        print(f"samples per pass: {len(rows)} (SEN12MS sar+s2, {TILE} px)")
        print(f"GeoTIFF per sample (rasterio windowed read): {tiff_rate:9.1f} samples/s")
        print(f"memory-mapped shards:                        {shard_rate:9.1f} samples/s")
        print(f"loader speed-up (shards / GeoTIFF): {shard_rate / tiff_rate:.1f}x")


if __name__ == "__main__":
    main()
