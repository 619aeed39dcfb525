"""Demo MDAS: three Augsburg sub-areas whose RGB and DSM lie on different grids, as in reality.

The real 3K RGB and DSM differ in pixel size and extent, which is exactly what the reader's
reprojection must handle; a demo on identical grids would let a broken alignment pass. So each
sub-area is one Landscape on a fine map grid (UTM 32N around Augsburg), sampled by map
coordinates onto an RGB grid of 0.3 m and a DSM grid of 0.5 m that starts a little further
east and north and reaches further south-east. Sub-area 1's DSM keeps the original's
lower-case spelling ``3K_dsm_sub_area1.tif``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import Affine, from_origin
from scipy import ndimage

from msgfm.data.demo.landscape import Landscape, render_dsm, render_rgb
from msgfm.data.raster import write_raster
from msgfm.data.readers.mdas import ARCHIVE_FOLDER

CRS = "EPSG:32632"
RGB_PIXEL_M = 0.3
DSM_PIXEL_M = 0.5
RGB_SHAPE = (640, 768)
# Upper-left corners (easting, northing) of the RGB grids: north, centre and west of Augsburg.
RGB_ORIGINS: dict[int, tuple[float, float]] = {
    1: (640_150.0, 5_362_600.0),
    2: (640_900.0, 5_358_950.0),
    3: (637_350.0, 5_359_700.0),
}
# Where the DSM grid starts relative to the RGB grid: 1.5 m east (so the first RGB columns
# have no height and are cropped away) and 2 m north; it extends 3 m beyond the RGB otherwise.
DSM_SHIFT_M = (1.5, 2.0)
DSM_MARGIN_M = 3.0
AUGSBURG_ELEVATION_M = 490.0


def _sample(land: Landscape, land_transform: Affine, transform: Affine, shape: tuple[int, int]):
    """The Landscape seen on another grid: pixel centres mapped through map coordinates."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
    xs, ys = transform @ (cols, rows)
    land_cols, land_rows = ~land_transform @ (xs, ys)
    coords = np.stack([land_rows - 0.5, land_cols - 0.5])
    classes = ndimage.map_coordinates(land.classes, coords, order=0, mode="nearest")
    terrain = ndimage.map_coordinates(land.terrain, coords, order=1, mode="nearest")
    return Landscape(classes=classes, terrain=terrain.astype(np.float32))


def write_sub_area(folder: Path, number: int, rng: np.random.Generator) -> None:
    """Write one sub-area's RGB (0.3 m) and DSM (0.5 m, shifted extent) GeoTIFFs."""
    x0, y0 = RGB_ORIGINS[number]
    rgb_transform = from_origin(x0, y0, RGB_PIXEL_M, RGB_PIXEL_M)
    dsm_x0, dsm_y0 = x0 + DSM_SHIFT_M[0], y0 + DSM_SHIFT_M[1]
    dsm_transform = from_origin(dsm_x0, dsm_y0, DSM_PIXEL_M, DSM_PIXEL_M)
    rgb_width_m, rgb_height_m = RGB_SHAPE[1] * RGB_PIXEL_M, RGB_SHAPE[0] * RGB_PIXEL_M
    dsm_shape = (
        int(np.ceil((rgb_height_m + DSM_SHIFT_M[1] + DSM_MARGIN_M) / DSM_PIXEL_M)),
        int(np.ceil((rgb_width_m - DSM_SHIFT_M[0] + DSM_MARGIN_M) / DSM_PIXEL_M)),
    )
    # One map-grid Landscape at the RGB resolution covers both rasters' union.
    land_transform = from_origin(x0, dsm_y0, RGB_PIXEL_M, RGB_PIXEL_M)
    land_shape = (
        int(np.ceil((dsm_shape[0] * DSM_PIXEL_M) / RGB_PIXEL_M)) + 1,
        int(np.ceil((dsm_x0 - x0 + dsm_shape[1] * DSM_PIXEL_M) / RGB_PIXEL_M)) + 1,
    )
    land = Landscape.generate(rng, land_shape, blob_scale=20.0)
    # The Landscape's terrain varies by tens of metres, right for 10 m pixels; a 200 m
    # sub-area of Augsburg (~490 m a.s.l.) is nearly flat, so buildings dominate the DSM.
    flat = AUGSBURG_ELEVATION_M + 0.05 * (land.terrain - land.terrain.mean())
    land = Landscape(classes=land.classes, terrain=flat.astype(np.float32))
    rgb = render_rgb(_sample(land, land_transform, rgb_transform, RGB_SHAPE), rng)
    dsm = render_dsm(_sample(land, land_transform, dsm_transform, dsm_shape), rng)
    write_raster(folder / f"3K_RGB_sub_area{number}.tif", rgb, crs=CRS, transform=rgb_transform)
    dsm_name = "3K_dsm_sub_area1.tif" if number == 1 else f"3K_DSM_sub_area{number}.tif"
    write_raster(folder / dsm_name, np.round(dsm, 2), crs=CRS, transform=dsm_transform)


def write(root: Path, rng: np.random.Generator) -> None:
    """Write ``root/Augsburg_data_4_publication/sub_area_{1,2,3}/`` in the real layout."""
    for number in sorted(RGB_ORIGINS):
        write_sub_area(Path(root) / ARCHIVE_FOLDER / f"sub_area_{number}", number, rng)
