"""Tile the pretraining sources (paper §3.3, Table 1) into shard sets of ``tile``² samples.

- ``sen12ms``: each 256² SAR+S2 patch gives one centre crop of ``tile`` (192) px, keeping
  the 10 m GSD (resizing would change what a pixel means for the S2 embedding). SAR NaN/inf
  become 0 dB, counted per file in the report.
- ``mdas``: each sub-area (RGB + DSM on the RGB grid) is cut into ``mdas_window``² windows,
  each resized to ``mdas_resize`` (384, paper §3.3) and cut into ``tile``² tiles; RGB and DSM
  of a tile share a row. Default window: ``mdas_resize`` itself, i.e. 384 px of the ~0.2 m
  RGB grid (~77 m) without resampling, giving ~21k tiles from the real three sub-areas. The
  paper's Table 1 lists 40k MDAS samples but not the window; a window of ~272 px (upsampled
  to 384) would give that count, so the window is configurable.
- ``millionaid`` / ``geopile``: RGB of any size, shorter side resized to ``tile``, then
  centre-cropped (one sample per image).

Rows follow the readers' deterministic order (and raster order within a sub-area), so a
re-run writes identical shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.config_checks import check_mdas_resize
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.data.registry import dataset_spec
from msgfm.data.sensors import SENSORS
from msgfm.data.shards import ShardWriter
from msgfm.data.tiling.geometry import centre_crop, resize, shorter_side_shape, windows
from msgfm.data.tiling.report import TilingReport

Tiles = Iterator[tuple[str, dict[str, np.ndarray], dict[str, Any]]]


def open_reader(source: str, data_root: Path) -> DatasetReader:
    """The reader of a source over ``<data_root>/<source>`` (all splits)."""
    return dataset_spec(source, downstream=False).open_reader(data_root)


def sen12ms_tiles(sample: Sample, ref: SampleRef, report: TilingReport, tile: int) -> Tiles:
    sar = centre_crop(sample.arrays["sar"], tile, source=ref.files["sar"][0])
    report.repair_sar(sar, ref.files["sar"])
    s2 = centre_crop(sample.arrays["s2"], tile, source=ref.files["s2"][0])
    yield sample.sample_id, {"sar": sar, "s2": s2}, {}


def mdas_tiles(sample: Sample, tile: int, resize_to: int, window: int) -> Tiles:
    rgb, dsm = sample.arrays["rgb"], sample.arrays["dsm"]
    for wy, wx in windows(*rgb.shape[-2:], window, window, cover_border=False):
        rgb_w = resize(rgb[:, wy : wy + window, wx : wx + window], (resize_to, resize_to))
        dsm_w = resize(dsm[:, wy : wy + window, wx : wx + window], (resize_to, resize_to))
        for ty, tx in windows(resize_to, resize_to, tile, tile, cover_border=False):
            arrays = {
                "rgb": rgb_w[:, ty : ty + tile, tx : tx + tile],
                "dsm": dsm_w[:, ty : ty + tile, tx : tx + tile],
            }
            tile_id = f"{sample.sample_id}_y{wy}_x{wx}_t{ty}_{tx}"
            yield tile_id, arrays, {"window_y": wy, "window_x": wx, "tile_y": ty, "tile_x": tx}


def rgb_tiles(sample: Sample, tile: int) -> Tiles:
    rgb = sample.arrays["rgb"]
    rgb = resize(rgb, shorter_side_shape(*rgb.shape[-2:], tile))
    yield sample.sample_id, {"rgb": centre_crop(rgb, tile)}, {}


def tile_pretrain(
    source: str,
    data_root: Path,
    out_dir: Path,
    *,
    tile: int = 192,
    mdas_resize: int = 384,
    mdas_window: int | None = None,
    rows_per_shard: int = 1024,
) -> dict[str, Any]:
    """Write ``source``'s pretraining tiles to a shard set in ``out_dir``; return the report."""
    spec = dataset_spec(source, downstream=False)
    reader = spec.open_reader(data_root)
    window = mdas_window or mdas_resize
    if source == "mdas":
        check_mdas_resize(tile, mdas_resize)
    report = TilingReport(source, data_root, out_dir)
    tilers: dict[str, Callable[[Sample, SampleRef], Tiles]] = {
        "sen12ms": lambda s, r: sen12ms_tiles(s, r, report, tile),
        "mdas": lambda s, r: mdas_tiles(s, tile, mdas_resize, window),
        "millionaid": lambda s, r: rgb_tiles(s, tile),
        "geopile": lambda s, r: rgb_tiles(s, tile),
    }
    bands = {role: SENSORS[role].bands for role in spec.roles}
    writer = ShardWriter(out_dir, rows_per_shard, bands=bands)
    try:
        for ref, sample in report.read_all(reader):
            origin = report.origin(ref)
            for sample_id, arrays, columns in tilers[source](sample, ref):
                writer.add(
                    sample_id,
                    arrays,
                    valid_bands={r: v for r, v in sample.valid_bands.items() if r in arrays},
                    split=ref.split or "train",  # unsplit sources are all pretraining data
                    source=source,
                    origin=origin,
                    **columns,
                )
                report.samples += 1
    except BaseException:
        writer.abort()
        raise
    summary = report.as_dict()
    mdas = {"mdas_resize": mdas_resize, "mdas_window": window} if source == "mdas" else {}
    writer.close(summary, tile=tile, task="pretrain", **mdas)
    return summary
