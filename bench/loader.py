"""Benchmark: pretraining samples/s from memory-mapped shards vs per-sample GeoTIFF reads.

The point of tiling into shards is that the data loader stops decoding compressed GeoTIFFs
per sample (target: >= 10x). Both contestants produce the same model input for the same
SEN12MS samples: the 192 px centre crop of SAR and S2, NaN set to 0 dB, normalised per
sensor, as float32 tensors. The GeoTIFF side is given its best shot: a windowed rasterio read
of just the crop. Both run single-process on a warm page cache, and the script checks that
they return identical tensors. The LAST line is the ratio.

    .venv/bin/python bench/loader.py                 # demo data in a temporary folder
    .venv/bin/python bench/loader.py --data-root data --samples 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from msgfm.data.demo import write_demo
from msgfm.data.loader import MultiSourceDataset, to_tensor
from msgfm.data.readers.sen12ms import SEN12MS
from msgfm.data.shards import ShardSet
from msgfm.data.tiling.pretrain import tile_pretrain

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
        sample[role] = to_tensor(role, array)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="real data root (default: demo data)")
    parser.add_argument("--samples", type=int, default=256, help="samples per pass (at most)")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per contestant")
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
            from_shards = dataset[("sen12ms", row)][1]
            from_tiff = read_geotiff_sample(files[row])
            for role in ("sar", "s2"):
                if not torch.equal(from_shards[role], from_tiff[role]):
                    raise SystemExit(f"row {row} {role}: shards and GeoTIFF disagree")

        shard_rate = rate(lambda row: dataset[("sen12ms", row)], rows, args.seconds)
        tiff_rate = rate(read_geotiff_sample, files, args.seconds)
        print(f"samples per pass: {len(rows)} (SEN12MS sar+s2, {TILE} px)")
        print(f"GeoTIFF per sample (rasterio windowed read): {tiff_rate:9.1f} samples/s")
        print(f"memory-mapped shards:                        {shard_rate:9.1f} samples/s")
        print(f"loader speed-up (shards / GeoTIFF): {shard_rate / tiff_rate:.1f}x")


if __name__ == "__main__":
    main()
