"""Reading and writing GeoTIFFs with rasterio, with errors that name the file and the problem.

Every reader in ``msgfm.data.readers`` goes through :func:`read_raster`, so a truncated file,
a wrong band count, an unexpected dtype or non-finite values are reported the same way for
all eight datasets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_bounds

from msgfm.errors import DataError
from msgfm.files import atomic_path


@dataclass(frozen=True)
class Raster:
    """Pixels (bands, rows, cols) plus the georeferencing needed to align other rasters."""

    data: np.ndarray
    crs: object
    transform: Affine
    path: Path


def read_raster(
    path: str | Path,
    *,
    bands: int | None = None,
    dtypes: Sequence[str] | None = None,
    allow_nonfinite: bool = False,
    shape: tuple[int, int] | None = None,
    out_shape: tuple[int, int] | None = None,
    resampling: rasterio.enums.Resampling = rasterio.enums.Resampling.bilinear,
) -> Raster:
    """Read all bands of a raster and check what the caller relies on.

    ``bands`` is the expected band count, ``dtypes`` the acceptable storage dtypes, ``shape``
    the expected (rows, cols) on disk: a band stored at the wrong size is refused here, before
    ``out_shape`` could resample it into place and hide the fault.
    ``out_shape`` resamples on read (rasterio's decimated/overview read), which is how the
    20 m and 60 m BigEarthNet bands are brought to the 10 m grid without an extra copy.
    Non-finite values are an error unless ``allow_nonfinite``: SAR σ0 legitimately holds NaN
    (no-data), and its caller repairs and counts them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes): an interrupted download or copy?")
    try:
        with rasterio.open(path) as src:
            if bands is not None and src.count != bands:
                raise DataError(path, f"expected {bands} band(s), found {src.count}")
            if dtypes is not None and src.dtypes[0] not in dtypes:
                raise DataError(
                    path, f"expected dtype {' or '.join(dtypes)}, found {src.dtypes[0]}"
                )
            if shape is not None and (src.height, src.width) != tuple(shape):
                raise DataError(
                    path, f"expected {shape[0]}x{shape[1]} px, found {src.height}x{src.width}"
                )
            if out_shape is None:
                data = src.read()
            else:
                data = src.read(out_shape=(src.count, *out_shape), resampling=resampling)
            crs, transform = src.crs, src.transform
    except DataError:
        raise
    except RasterioError as exc:
        raise DataError(path, f"not a readable raster (truncated or corrupt?): {exc}") from exc
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(path, f"{bad} non-finite (NaN/inf) pixel value(s)")
    return Raster(data=data, crs=crs, transform=transform, path=path)


def require_overlap(raster: Raster, partner: Raster) -> None:
    """Refuse a pair of rasters whose footprints do not overlap on the ground.

    Paired sensors (S1 with S2) must image the same place, or cross-sensor pretraining and
    fusion learn noise; a georeference kilometres off is a mislabelled or misplaced file. The
    partner's bounds are brought into ``raster``'s CRS; rasters without a CRS are not checked.
    """
    if raster.crs is None or partner.crs is None:
        return
    here = array_bounds(*raster.data.shape[-2:], raster.transform)  # west, south, east, north
    there = transform_bounds(
        partner.crs, raster.crs, *array_bounds(*partner.data.shape[-2:], partner.transform)
    )
    if here[0] < there[2] and there[0] < here[2] and here[1] < there[3] and there[1] < here[3]:
        return
    raise DataError(
        raster.path,
        f"footprint {_rounded(here)} does not overlap its partner {partner.path.name} "
        f"{_rounded(there)} (west, south, east, north in {raster.crs}); expected co-registered "
        "patches",
    )


def _rounded(bounds: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(value, 1) for value in bounds)


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: object,
    transform: Affine,
    compress: str | None = "deflate",
    nodata: float | None = None,
) -> None:
    """Write a (bands, rows, cols) array as a tiled GeoTIFF, atomically.

    The file appears under its final name only once complete, so a killed job never leaves
    a truncated GeoTIFF that a later run would trust.
    """
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
    }
    if compress:
        profile["compress"] = compress
    if nodata is not None:
        profile["nodata"] = nodata
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
