"""Unlabelled RGB image collections used for pretraining: MillionAID and GeoPile.

Both are folders of ordinary image files of varying sizes, not GeoTIFF tiles, so they share
one loader: Pillow for JPEG/PNG, rasterio for TIFF. Everything becomes uint8 RGB (3, H, W):
grayscale is replicated, an alpha channel or a fourth (NIR) TIFF band is dropped, because the
RGB patch embedding takes exactly three channels. A truncated or corrupt file is a
:class:`DataError` naming it, never a silently half-grey image.

MillionAID (Long et al., "On Creating Benchmark Dataset for Aerial Image Interpretation:
Reviews, Guidances and Million-AID", IEEE JSTARS 14, 2021): ``train.zip`` and ``test.zip``
from https://captain-whu.github.io/DiRS/ (manual download). Layout after extraction::

    <root>/train/<level-1>/<level-2>[/<level-3>]/*.jpg      scene classes as folders
    <root>/test/*.jpg                                       no labels

Both folders are read recursively: a copy whose test images were sorted into class folders
must not lose 99 % of the collection. The release holds 10,000 labelled train and 990,848 test
images; a folder with less than half of its count is read with a warning (a partial extraction,
or a deliberate subset such as the demo).

GeoPile (Mendieta et al., "Towards Geospatial Foundation Models via Continual Pretraining",
ICCV 2023; OneDrive link in the GFM README, manual download). Layout::

    <root>/GeoPileV0/<source dataset>/<class>/<image>.{jpg,png,tif}

with source datasets NAIP, RSD46-WHU, MLRSNet, RESISC45 and PatternNet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from msgfm.data.raster import read_raster
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.errors import DataError

PILLOW_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
GEOPILE_FOLDER = "GeoPileV0"
# Images per folder of the Million-AID release (Long et al. 2021), and the share below which a
# read warns.
MILLIONAID_IMAGES: dict[str, int] = {"train": 10_000, "test": 990_848}
MILLIONAID_WARN_SHARE = 0.5

log = logging.getLogger(__name__)


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB (3, H, W); DataError if it is unreadable."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        data = read_raster(path, dtypes=("uint8",)).data
        if data.shape[0] < 3:  # gray or gray+alpha: replicate the gray band
            return np.repeat(data[:1], 3, axis=0)
        return np.ascontiguousarray(data[:3])
    if suffix not in PILLOW_SUFFIXES:
        raise DataError(path, f"unsupported image type {suffix!r}")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable image (truncated or corrupt?): {exc}") from exc
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _image_files(folder: Path) -> list[Path]:
    """Image files anywhere under a folder, sorted by path for a deterministic sample order."""
    if not folder.is_dir():
        return []
    suffixes = PILLOW_SUFFIXES | TIFF_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


class _RGBCollection(DatasetReader):
    """Shared ``read``: one image file per sample, role ``rgb``."""

    def read(self, ref: SampleRef) -> Sample:
        (path,) = ref.files["rgb"]
        return Sample(
            sample_id=ref.sample_id,
            arrays={"rgb": load_rgb(path)},
            split=ref.split,
            meta={"source": str(path), **ref.meta},
        )


class MillionAID(_RGBCollection):
    """MillionAID images; meta ``labels`` (the folder levels) and ``class`` (the leaf).

    ``split``: None (both folders), "train" or "test" (the archives' own folders; msGFM
    pretrains on all of it, unlabelled).
    """

    name = "millionaid"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root)
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be None, 'train' or 'test', not {split!r}")
        for part in ("train", "test") if split is None else (split,):
            folder = self.root / part
            images = _image_files(folder)
            expected = MILLIONAID_IMAGES[part]
            if len(images) < MILLIONAID_WARN_SHARE * expected:
                log.warning(
                    "%d images under %s, %.2g %% of the %s the Million-AID release holds: "
                    "an incomplete extraction?",
                    len(images), folder, 100 * len(images) / expected, f"{expected:,}",
                )  # fmt: skip
            for path in images:
                levels = path.relative_to(folder).parts[:-1]
                self.refs.append(
                    SampleRef(
                        sample_id=path.relative_to(self.root).as_posix(),
                        files={"rgb": (path,)},
                        split=part,
                        meta={"labels": levels, "class": levels[-1] if levels else None},
                    )
                )
        self.require_samples("train/<level-1>/<level-2>/<class>/*.jpg or test/*.jpg")


class GeoPile(_RGBCollection):
    """GeoPile images; meta ``dataset`` (NAIP, RESISC45, ...) and ``class``.

    ``split``: GeoPile is pretraining-only data without splits; None and "train" both mean
    every image.
    """

    name = "geopile"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root)
        if split not in (None, "train"):
            raise ValueError(f"GeoPile is pretraining data without splits; got split={split!r}")
        base = self.root / GEOPILE_FOLDER
        for path in _image_files(base):
            parts = path.relative_to(base).parts
            if len(parts) != 3:
                continue  # not <dataset>/<class>/<image>: e.g. a README or a stray file
            self.refs.append(
                SampleRef(
                    sample_id=path.relative_to(base).as_posix(),
                    files={"rgb": (path,)},
                    split=split,
                    meta={"dataset": parts[0], "class": parts[1]},
                )
            )
        self.require_samples(f"{GEOPILE_FOLDER}/<dataset>/<class>/<image>.jpg")
