"""MDAS (Augsburg): aerial RGB paired with a digital surface model, for cross-sensor pretraining.

Source: mediaTUM 1657312 (DOI 10.14459/2022mp1657312), archive
``Augsburg_data_4_publication.zip`` (Hu et al., "MDAS: a new multimodal benchmark dataset for
remote sensing", Earth System Science Data 15, 2023). Layout after extraction::

    <root>/Augsburg_data_4_publication/sub_area_<N>/3K_RGB_sub_area<N>.tif   uint8, 3 bands
    <root>/Augsburg_data_4_publication/sub_area_<N>/3K_DSM_sub_area<N>.tif   float32, 1 band

The original spells one DSM ``3K_dsm_sub_area1.tif``, so names are matched case-insensitively.
Some copies store the RGB with a fourth (alpha) band; only the first three bands are kept.
The sub-areas also hold HySpex, EnMAP, Sentinel-1/-2 and OSM rasters; msGFM pairs only RGB
with DSM (paper §3.2), so this reader ignores them, as it ignores ``entire_city/``.

RGB and DSM come on different grids (different pixel size and extent). The DSM is therefore
reprojected (bilinear) onto the RGB grid using both files' CRS and transform, and the sample
is cropped to the rectangle both rasters cover, so every RGB pixel has a measured height.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from msgfm.data.raster import Raster, read_raster
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.errors import DataError

ARCHIVE_FOLDER = "Augsburg_data_4_publication"
_SUB_AREA = re.compile(r"sub_area_(\d+)")


def _find_case_insensitive(folder: Path, name: str) -> Path | None:
    """The file in ``folder`` whose name equals ``name`` ignoring case, if any."""
    wanted = name.lower()
    for candidate in sorted(folder.iterdir()):
        if candidate.name.lower() == wanted and candidate.is_file():
            return candidate
    return None


def _nodata(path: Path) -> float | None:
    """The no-data value a GeoTIFF declares (read_raster does not return it)."""
    with rasterio.open(path) as src:
        return src.nodata


def dsm_on_rgb_grid(rgb: Raster, dsm: Raster) -> np.ndarray:
    """Reproject a (1, h, w) DSM onto the RGB raster's grid; uncovered pixels become NaN."""
    for raster in (rgb, dsm):
        if raster.crs is None:
            raise DataError(raster.path, "no CRS: cannot align RGB and DSM without georeferencing")
    out = np.full((1, *rgb.data.shape[1:]), np.nan, dtype=np.float32)
    reproject(
        source=dsm.data.astype(np.float32, copy=False),
        destination=out,
        src_transform=dsm.transform,
        src_crs=dsm.crs,
        src_nodata=_nodata(dsm.path),
        dst_transform=rgb.transform,
        dst_crs=rgb.crs,
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    return out


def covered_window(dsm: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of finite DSM pixels (the two rasters' overlap)."""
    finite = np.isfinite(dsm[0])
    rows = np.flatnonzero(finite.any(axis=1))
    cols = np.flatnonzero(finite.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


class MDAS(DatasetReader):
    """The three MDAS sub-areas, one sample each: ``rgb`` uint8 (3, H, W) and ``dsm`` float32
    (1, H, W) on the same grid (the RGB grid, cropped to where the DSM has data).

    ``split``: MDAS is pretraining-only data without splits; ``None`` and ``"train"`` both
    mean all sub-areas. ``min_dsm_coverage``: the smallest share of the RGB grid the DSM must
    cover; less means the two files do not belong together.
    """

    name = "mdas"

    def __init__(
        self, root: str | Path, split: str | None = None, *, min_dsm_coverage: float = 0.9
    ) -> None:
        super().__init__(root)
        if split not in (None, "train"):
            raise ValueError(f"MDAS is pretraining data without splits; got split={split!r}")
        self.split = split
        self.min_dsm_coverage = min_dsm_coverage
        base = self.root / ARCHIVE_FOLDER
        folders = sorted(base.glob("sub_area_*")) if base.is_dir() else []
        for folder in folders:
            match = _SUB_AREA.fullmatch(folder.name)
            if match is None or not folder.is_dir():
                continue
            self.refs.append(self._ref(folder, int(match.group(1))))
        self.refs.sort(key=lambda ref: ref.meta["sub_area"])
        self.require_samples(f"{ARCHIVE_FOLDER}/sub_area_1/3K_RGB_sub_area1.tif")

    def _ref(self, folder: Path, number: int) -> SampleRef:
        files: dict[str, tuple[Path, ...]] = {}
        for role, stem in (("rgb", "3K_RGB"), ("dsm", "3K_DSM")):
            expected = f"{stem}_sub_area{number}.tif"
            found = _find_case_insensitive(folder, expected)
            if found is None:
                raise DataError(folder, f"missing {expected} (matched ignoring case)")
            files[role] = (found,)
        return SampleRef(
            sample_id=f"sub_area_{number}", files=files, split=self.split, meta={"sub_area": number}
        )

    def read(self, ref: SampleRef) -> Sample:
        (rgb_path,) = ref.files["rgb"]
        (dsm_path,) = ref.files["dsm"]
        rgb = read_raster(rgb_path, dtypes=("uint8",))
        if rgb.data.shape[0] not in (3, 4):
            raise DataError(
                rgb_path, f"expected 3 bands (RGB) or 4 (RGB+alpha), found {len(rgb.data)}"
            )
        dsm = read_raster(dsm_path, bands=1, dtypes=("float32",))
        aligned = dsm_on_rgb_grid(rgb, dsm)
        rows, cols = covered_window(aligned)
        height, width = rgb.data.shape[1:]
        coverage = (rows.stop - rows.start) * (cols.stop - cols.start) / (height * width)
        if coverage < self.min_dsm_coverage:
            raise DataError(
                dsm_path,
                f"covers only {coverage:.1%} of the RGB grid of {rgb_path.name} "
                f"(need {self.min_dsm_coverage:.0%}): different area or CRS?",
            )
        dsm_crop = aligned[:, rows, cols]
        holes = int(np.count_nonzero(~np.isfinite(dsm_crop)))
        if holes:
            raise DataError(dsm_path, f"{holes} no-data pixel(s) inside the area the RGB covers")
        transform = rgb.transform @ Affine.translation(cols.start, rows.start)
        return Sample(
            sample_id=ref.sample_id,
            arrays={"rgb": np.ascontiguousarray(rgb.data[:3, rows, cols]), "dsm": dsm_crop},
            split=ref.split,
            meta={
                "sub_area": ref.meta["sub_area"],
                "crs": str(rgb.crs),
                "transform": tuple(transform)[:6],
                "dsm_coverage": round(float(coverage), 6),
            },
        )
