"""Demo MillionAID and GeoPile: a few dozen small RGB images of varying size in their real trees.

The real collections hold images of many sizes and formats, which is what the pretraining
tiler must cope with (resizing, format decoding), so the demo varies the size (200-300 px)
and writes JPEG, and for GeoPile's NAIP part 4-band (RGB+NIR) GeoTIFFs. Each image renders
its own Landscape, so the RGB encoder sees the same kind of scenes as the other sensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rasterio.transform import from_origin

from msgfm.data.demo.landscape import Landscape, render_rgb, render_s2
from msgfm.data.raster import write_raster
from msgfm.data.readers.rgb_collections import GEOPILE_FOLDER

# Real MillionAID scene folders: two three-level branches and one without a level-2 folder.
MILLIONAID_CLASSES: tuple[str, ...] = (
    "agriculture_land/arable_land/dry_field",
    "agriculture_land/woodland/forest",
    "transportation_land/airport_area/runway",
    "water_area/lake",
)
MILLIONAID_PER_CLASS = 5
MILLIONAID_TEST = 8
GEOPILE_CLASSES: dict[str, tuple[str, ...]] = {
    "NAIP": ("images",),
    "RSD46-WHU": ("airport", "farmland"),
    "MLRSNet": ("bridge", "forest"),
    "RESISC45": ("beach", "dense_residential"),
    "PatternNet": ("river", "parking_lot"),
}
GEOPILE_PER_CLASS = 3


def _rgb(rng: np.random.Generator) -> np.ndarray:
    """A (3, H, W) uint8 scene of random size between 200 and 300 pixels a side."""
    size = (int(rng.integers(200, 301)), int(rng.integers(200, 301)))
    return render_rgb(Landscape.generate(rng, size, blob_scale=10.0), rng)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.transpose(1, 2, 0)).save(path, format="JPEG", quality=90)


def _write_naip(path: Path, rng: np.random.Generator) -> None:
    """A 4-band uint8 R, G, B, NIR GeoTIFF, as NAIP ships (UTM zone 15N, 1 m pixels)."""
    size = int(rng.integers(200, 301))
    land = Landscape.generate(rng, size, blob_scale=10.0)
    nir = np.clip(render_s2(land, rng)[7] * (255.0 / 4000.0), 0, 255).astype(np.uint8)
    data = np.concatenate([render_rgb(land, rng), nir[None]])
    write_raster(path, data, crs="EPSG:26915", transform=from_origin(500_000, 4_500_000, 1, 1))


def write_millionaid(root: Path, rng: np.random.Generator) -> None:
    """Write ``root/train/<levels>/*.jpg`` and ``root/test/*.jpg``."""
    root = Path(root)
    for class_path in MILLIONAID_CLASSES:
        leaf = class_path.rsplit("/", 1)[-1]
        for i in range(MILLIONAID_PER_CLASS):
            _write_jpeg(root / "train" / class_path / f"{leaf}_{i:05d}.jpg", _rgb(rng))
    for i in range(MILLIONAID_TEST):
        _write_jpeg(root / "test" / f"P{i:07d}.jpg", _rgb(rng))


def write_geopile(root: Path, rng: np.random.Generator) -> None:
    """Write ``root/GeoPileV0/<dataset>/<class>/<image>`` for the five source datasets."""
    base = Path(root) / GEOPILE_FOLDER
    for dataset, classes in GEOPILE_CLASSES.items():
        for class_name in classes:
            for i in range(GEOPILE_PER_CLASS):
                stem = base / dataset / class_name / f"{class_name}_{i:04d}"
                if dataset == "NAIP":
                    _write_naip(stem.with_suffix(".tif"), rng)
                else:
                    _write_jpeg(stem.with_suffix(".jpg"), _rgb(rng))
