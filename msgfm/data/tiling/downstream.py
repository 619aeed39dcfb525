"""Tile the four downstream datasets (paper Table 2-3) into shard sets.

Each task's reader, roles and tiler options (with their defaults) are declared in
:mod:`msgfm.data.registry`; the row functions here are its tilers:

- ``bigearthnet``: s2 uint16 (13, 120, 120) with B10 flagged invalid in meta.json, sar
  float32 (2, 120, 120) (NaN → 0 dB, counted), target uint8 (19,) multi-hot; index columns
  split and labels (the 43-class names, for audits).
- ``sen12ms_cr``: sar, s2_cloudy and s2 (the cloud-free target) at 256², split.
- ``spacenet2``: mul resized to a fixed ``mul_size``² (162: the MUL images vary by a pixel
  or two, and a batch needs one shape), pan and pansharpened at ``pan_size``² (650), split.
- ``vaihingen``: ``crop``² windows (512) with ``stride`` (256) of rgb (IRRG), dsm and label,
  with the last window of a row/column aligned to the area's edge so every pixel is
  covered; the index records area, y, x and the area's height/width, so test predictions
  can be stitched back into whole areas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.data.registry import dataset_spec
from msgfm.data.sensors import SENSORS
from msgfm.data.shards import ShardWriter
from msgfm.data.tiling.geometry import pad_to, resize, windows
from msgfm.data.tiling.report import TilingReport

# Padding where a Vaihingen area is smaller than a crop: black image, flat DSM, ignored label.
_PAD_VALUES = {"rgb": 0, "dsm": 0.0, "label": 255}

Rows = Iterator[tuple[str, dict[str, np.ndarray], dict[str, Any]]]


def bigearthnet_rows(sample: Sample, ref: SampleRef, report: TilingReport, **_: int) -> Rows:
    report.repair_sar(sample.arrays["sar"], ref.files["sar"])
    arrays = {
        "s2": sample.arrays["s2"],
        "sar": sample.arrays["sar"],
        "target": np.asarray(sample.meta["target"], dtype=np.uint8),
    }
    yield sample.sample_id, arrays, {"labels": list(sample.meta["labels"])}


def sen12ms_cr_rows(sample: Sample, ref: SampleRef, report: TilingReport, **_: int) -> Rows:
    report.repair_sar(sample.arrays["sar"], ref.files["sar"])
    yield sample.sample_id, {r: sample.arrays[r] for r in ("sar", "s2_cloudy", "s2")}, {}


def spacenet2_rows(sample: Sample, *_: Any, mul_size: int, pan_size: int) -> Rows:
    arrays = {
        "mul": resize(sample.arrays["mul"], (mul_size, mul_size)),
        "pan": resize(sample.arrays["pan"], (pan_size, pan_size)),
        "pansharpened": resize(sample.arrays["pansharpened"], (pan_size, pan_size)),
    }
    yield sample.sample_id, arrays, {"aoi": sample.meta.get("aoi")}


def vaihingen_rows(sample: Sample, *_: Any, crop: int, stride: int) -> Rows:
    height, width = sample.arrays["rgb"].shape[-2:]
    padded = {role: pad_to(a, crop, _PAD_VALUES[role]) for role, a in sample.arrays.items()}
    area = sample.meta["area"]
    for y, x in windows(height, width, crop, stride, cover_border=True):
        arrays = {role: a[:, y : y + crop, x : x + crop] for role, a in padded.items()}
        columns = {"area": area, "y": y, "x": x, "area_height": height, "area_width": width}
        yield f"area{area}_y{y}_x{x}", arrays, columns


def open_reader(task: str, data_root: Path) -> DatasetReader:
    """The reader of a downstream task over ``<data_root>/<task>`` (all splits)."""
    return dataset_spec(task, downstream=True).open_reader(data_root)


def _band_names(task: str, sample: Sample) -> dict[str, list[str]]:
    """Band names per role for meta.json; the datasets' own names where not a sensor's."""
    names: dict[str, list[str]] = {}
    for role in dataset_spec(task).roles:
        sensor = "s2" if role == "s2_cloudy" else role
        if role in ("mul", "pansharpened") or (role == "rgb" and "bands" in sample.meta):
            names[role] = list(sample.meta["bands"])
        elif role == "pan":
            names[role] = ["PAN"]
        elif sensor in SENSORS:
            names[role] = list(SENSORS[sensor].bands)
    return names


def tile_downstream(task: str, data_root: Path, out_dir: Path, **opts: int) -> dict[str, Any]:
    """Write a downstream dataset (all splits) to a shard set; return the tiling report.

    ``opts``: ``rows_per_shard`` (1024), and the task's tiler options (the registry's
    ``tiler_options``: ``mul_size``/``pan_size`` for spacenet2, ``crop``/``stride`` for
    vaihingen); one it does not take raises :class:`msgfm.errors.OptionError`.
    """
    spec = dataset_spec(task, downstream=True)
    rows_per_shard = int(opts.pop("rows_per_shard", 1024))
    settings = spec.tiler_settings(opts)
    rows = spec.tiler_function()
    reader = spec.open_reader(data_root)
    report = TilingReport(task, data_root, out_dir)
    writer: ShardWriter | None = None
    try:
        for ref, sample in report.read_all(reader):
            if writer is None:
                bands = _band_names(task, sample)
                writer = ShardWriter(out_dir, rows_per_shard, bands=bands)
            origin = report.origin(ref)
            for sample_id, arrays, columns in rows(sample, ref, report, **settings):
                writer.add(
                    sample_id,
                    arrays,
                    valid_bands={r: v for r, v in sample.valid_bands.items() if r in arrays},
                    split=ref.split,
                    source=task,
                    origin=origin,
                    **columns,
                )
                report.samples += 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        writer = ShardWriter(out_dir, rows_per_shard)  # clears stale output, then refuses
    summary = report.as_dict()
    writer.close(summary, task=task, **settings)
    return summary
