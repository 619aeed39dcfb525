"""A small SEN12MS-CR in the real layout: S1, clear S2 and cloudy S2 of one Landscape per patch.

The cloudy image is a second acquisition of the same Landscape, rendered through
``landscape.cloud_mask`` at a random cover, so cloud removal has a recoverable target. The
scenes include official validation and test scenes and, deliberately, spring scenes 1 and 10
next to test scene 106: the names a substring match would confuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from msgfm.data.demo.landscape import Landscape, cloud_mask, render_s2, render_sar
from msgfm.data.raster import write_raster
from msgfm.data.readers.sen12ms_cr import patch_path

PATCH_SIZE = 256
PIXEL_METRES = 10.0
# (season, scene, UTM EPSG code); official split: 1, 10 train; 17, 65 val; 106, 73 test.
SCENES: tuple[tuple[str, int, int], ...] = (
    ("ROIs1158_spring", 1, 32633),
    ("ROIs1158_spring", 10, 32617),
    ("ROIs1158_spring", 17, 32632),
    ("ROIs1158_spring", 106, 32611),
    ("ROIs1868_summer", 73, 32645),
    ("ROIs1970_fall", 65, 32721),
)
PATCHES_PER_SCENE = 2
PATCH_COLUMNS = 20
CLOUD_COVER = (0.15, 0.7)


def write(root: Path, rng: np.random.Generator, patches_per_scene: int = PATCHES_PER_SCENE) -> None:
    """Write the demo SEN12MS-CR into ``root`` (= ``<data_root>/sen12ms_cr``)."""
    root = Path(root)
    for index, (season, scene, epsg) in enumerate(SCENES):
        patches = np.sort(rng.choice(np.arange(1, 600), size=patches_per_scene, replace=False))
        for patch in patches.tolist():
            row, col = divmod(patch, PATCH_COLUMNS)
            transform = from_origin(
                400000.0 + col * PATCH_SIZE * PIXEL_METRES,
                5000000.0 - 100000.0 * index - row * PATCH_SIZE * PIXEL_METRES,
                PIXEL_METRES,
                PIXEL_METRES,
            )
            land = Landscape.generate(rng, PATCH_SIZE)
            cloud = cloud_mask(rng, (PATCH_SIZE, PATCH_SIZE), rng.uniform(*CLOUD_COVER))
            rendered = {
                "s1": render_sar(land, rng),
                "s2": render_s2(land, rng),
                "s2_cloudy": render_s2(land, rng, cloud=cloud),
            }
            for source, data in rendered.items():
                path = patch_path(root, season, source, scene, patch)
                write_raster(path, data, crs=f"EPSG:{epsg}", transform=transform)
