"""Benchmark: tiler throughput against a plain rasterio read of the same source files.

Tiling is I/O- and decode-bound work that runs once per dataset; the tiler should cost at
most about twice a bare read of its inputs (target ratio >= 0.5). For every source this
script reads all files the tiler reads with ``rasterio.open(path).read()``, then runs the
tiler, both on a warm page cache, best of ``--repeat`` runs each, and prints source MB/s of
both. The LAST line is the SEN12MS ratio (tiler MB/s / plain read MB/s).

    .venv/bin/python bench/tiling.py                 # demo data in a temporary folder
    .venv/bin/python bench/tiling.py --data-root data --sources sen12ms
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from msgfm.data.demo import write_demo
from msgfm.data.registry import DOWNSTREAM_TASKS, PRETRAIN_SOURCES, dataset_spec
from msgfm.data.tiling import downstream, pretrain

RASTER_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png"}


def source_files(name: str, data_root: Path) -> list[Path]:
    reader = dataset_spec(name).open_reader(data_root)
    return [p for ref in reader.refs for paths in ref.files.values() for p in paths]


def plain_read(files: list[Path]) -> float:
    """Seconds to read every file once: rasterio for rasters, bytes for sidecar JSON."""
    start = time.perf_counter()
    for path in files:
        if path.suffix.lower() in RASTER_SUFFIXES:
            with rasterio.open(path) as src:
                src.read()
        else:
            path.read_bytes()
    return time.perf_counter() - start


def run_tiler(name: str, data_root: Path, out: Path) -> float:
    start = time.perf_counter()
    if name in PRETRAIN_SOURCES:
        pretrain.tile_pretrain(name, data_root, out / name)
    else:
        downstream.tile_downstream(name, data_root, out / name)
    return time.perf_counter() - start


def measure(name: str, data_root: Path, out: Path, repeat: int) -> tuple[float, float, float]:
    """(source MB, plain-read MB/s, tiler MB/s), best of ``repeat`` alternating runs."""
    files = source_files(name, data_root)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    plain_read(files)  # warm the page cache for both contestants
    read_s, tile_s = [], []
    for _ in range(repeat):
        read_s.append(plain_read(files))
        tile_s.append(run_tiler(name, data_root, out))
    return megabytes, megabytes / min(read_s), megabytes / min(tile_s)


def main() -> None:
    # MillionAID/GeoPile JPEGs carry no georeference; that is expected, not news.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="real data root (default: demo data)")
    parser.add_argument("--sources", nargs="+", default=[*PRETRAIN_SOURCES, *DOWNSTREAM_TASKS])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if "sen12ms" not in args.sources:
        parser.error("the headline figure is SEN12MS's: include sen12ms in --sources")
    with tempfile.TemporaryDirectory(prefix="msgfm-bench-tiling-") as tmp:
        tmp = Path(tmp)
        data_root = args.data_root
        sources = args.sources
        if data_root is None:
            data_root = tmp / "data"
            write_demo(data_root, datasets=sources)
        ratios = {}
        print(f"{'source':<12} {'MB':>8} {'read MB/s':>10} {'tiler MB/s':>11} {'ratio':>6}")
        for name in sorted(sources, key=lambda s: s == "sen12ms"):
            megabytes, read_rate, tile_rate = measure(name, data_root, tmp / "shards", args.repeat)
            ratios[name] = tile_rate / read_rate
            print(
                f"{name:<12} {megabytes:8.1f} {read_rate:10.1f} {tile_rate:11.1f} "
                f"{ratios[name]:6.2f}"
            )
        ratio = ratios["sen12ms"]
        print(f"tiling throughput ratio (sen12ms tiler / plain rasterio read): {ratio:.2f}")


if __name__ == "__main__":
    main()
