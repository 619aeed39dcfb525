"""A small SEN12MS in the real layout: S1/S2/LC triplets of one Landscape each, plus split lists.

Sizes, dtypes, folder and file names and the split-list format are those of the real dataset
(see ``msgfm.data.readers.sen12ms``). Each season holds two scenes of ``PATCHES_PER_SCENE``
structured patches under one ``Acquisition`` per scene (64 unlabelled S2/SAR pairs, ten times
BigEarthNet's 10 % subset); the second scene of spring and of fall is "held out" into the test
list, as the real test list holds whole scenes. Some S1 patches carry a few NaN pixels because
real ones do, so the tiler's repair path runs on the demo too. The land-cover patch is
MODIS-blocky (500 m cells seen at 10 m).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from msgfm.data.demo.landscape import Acquisition, Landscape, render_s2, render_sar
from msgfm.data.raster import write_raster
from msgfm.data.readers.sen12ms import patch_path, split_list_path

PATCH_SIZE = 256
PIXEL_METRES = 10.0
# (season, scene, UTM EPSG code, easting, northing of the scene's upper-left corner)
SCENES: tuple[tuple[str, int, int, float, float], ...] = (
    ("ROIs1158_spring", 1, 32633, 300000.0, 5400000.0),
    ("ROIs1158_spring", 63, 32618, 580000.0, 4510000.0),
    ("ROIs1868_summer", 4, 32630, 420000.0, 4480000.0),
    ("ROIs1868_summer", 146, 32755, 330000.0, 6250000.0),
    ("ROIs1970_fall", 3, 32610, 550000.0, 4180000.0),
    ("ROIs1970_fall", 139, 32650, 440000.0, 4420000.0),
    ("ROIs2017_winter", 8, 32736, 290000.0, 7110000.0),
    ("ROIs2017_winter", 63, 32614, 610000.0, 3350000.0),
)
TEST_SCENES = frozenset({("ROIs1158_spring", 63), ("ROIs1970_fall", 139)})
PATCHES_PER_SCENE = 8
BLOB_SCALE = 8.0  # class regions wide enough for 40-80 m field strips
NAN_EVERY = 3  # every third S1 patch gets a few NaN pixels
PATCH_COLUMNS = 20  # patches per row of a scene's grid: patch number → position
# MODIS MCD12Q1 legend codes per Landscape class, for the four SEN12MS LC bands
# (IGBP, LCCS land cover, LCCS land use, LCCS surface hydrology).
_LC_CODES = np.array(
    [
        [17, 3, 3, 3],  # water
        [4, 14, 10, 10],  # forest
        [10, 31, 30, 30],  # grassland
        [12, 31, 36, 30],  # cropland
        [13, 1, 9, 1],  # impervious
        [13, 1, 9, 1],  # building
        [16, 1, 1, 1],  # bare
    ],
    dtype=np.uint16,
)
_LC_CELL_PIXELS = 50  # a 500 m MODIS cell at 10 m


def write(root: Path, rng: np.random.Generator, patches_per_scene: int = PATCHES_PER_SCENE) -> None:
    """Write the demo SEN12MS into ``root`` (= ``<data_root>/sen12ms``)."""
    root = Path(root)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    written = 0
    for season, scene, epsg, east, north in SCENES:
        patches = np.sort(rng.choice(np.arange(1, 400), size=patches_per_scene, replace=False))
        acquisition = Acquisition.draw(rng)  # one date per scene
        for patch in patches.tolist():
            row, col = divmod(patch, PATCH_COLUMNS)
            transform = from_origin(
                east + col * PATCH_SIZE * PIXEL_METRES,
                north - row * PATCH_SIZE * PIXEL_METRES,
                PIXEL_METRES,
                PIXEL_METRES,
            )
            crs = f"EPSG:{epsg}"
            triplet = _render_triplet(rng, acquisition, with_nan=written % NAN_EVERY == 0)
            written += 1
            for source, data in triplet.items():
                path = patch_path(root, season, source, scene, patch)
                write_raster(path, data, crs=crs, transform=transform)
            split = "test" if (season, scene) in TEST_SCENES else "train"
            lists[split].append(f"{season}_s2_{scene}_p{patch}.tif")
    for split, names in lists.items():
        list_file = split_list_path(root, split)
        list_file.parent.mkdir(parents=True, exist_ok=True)
        # The real lists are sorted as strings (…p299, p30, p300…).
        list_file.write_text("".join(f"{name}\n" for name in sorted(names)))


def _render_triplet(
    rng: np.random.Generator, acquisition: Acquisition, *, with_nan: bool
) -> dict[str, np.ndarray]:
    """S1, S2 and LC of one location, all from the same Landscape."""
    land = Landscape.generate(rng, PATCH_SIZE, blob_scale=BLOB_SCALE).with_structure(rng)
    sar = render_sar(land, rng, acquisition=acquisition)
    if with_nan:  # inside the central half, so the pretraining centre crop sees them
        rows = rng.integers(PATCH_SIZE // 4, 3 * PATCH_SIZE // 4, size=5)
        cols = rng.integers(PATCH_SIZE // 4, 3 * PATCH_SIZE // 4, size=5)
        sar[:, rows, cols] = np.nan
    cells = PATCH_SIZE // _LC_CELL_PIXELS + 1
    blocky = land.resized((cells, cells)).resized((PATCH_SIZE, PATCH_SIZE))
    lc = _LC_CODES[blocky.classes].transpose(2, 0, 1)
    s2 = render_s2(land, rng, acquisition=acquisition)
    return {"s1": sar, "s2": s2, "lc": np.ascontiguousarray(lc)}
