"""Demo SpaceNet 2: two AOIs of WorldView-3-like PAN, MUL and pan-sharpened MUL images.

Pan-sharpening must recover detail that the 1.24 m MUL image lost, so the three products of
one image come from one 650² Landscape: the 8-band pan-sharpened image renders it at 0.3 m,
the MUL image is its 4x4 block average (what a coarser detector integrates) at 162², and the
PAN image is the mean of the visible and first near-infrared bands at 0.3 m. Values are 11-bit
digital numbers in uint16. Image numbers are chosen so that every hash split has images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin
from scipy import ndimage

from msgfm.data.demo.landscape import Landscape, render_s2
from msgfm.data.raster import write_raster
from msgfm.data.readers.spacenet2 import MAX_VALUE, PRODUCTS, split_of

SIZE = 650
MUL_FACTOR = 4
PIXEL_DEG = 2.7e-6  # ~0.3 m; SpaceNet 2 tiles are georeferenced in WGS84 longitude/latitude
# AOI -> (west, north) of the first tile, and how many images per split it gets.
AOIS: dict[str, tuple[tuple[float, float], dict[str, int]]] = {
    "AOI_2_Vegas": ((-115.30, 36.20), {"train": 2, "val": 0, "test": 1}),
    "AOI_3_Paris": ((2.30, 48.86), {"train": 1, "val": 1, "test": 1}),
}
# Sentinel-2 band (index into the 13 of S2_BANDS) nearest to each WorldView-3 MUL band;
# yellow (585-625 nm) sits between S2 green and red and is their mean.
_S2_FOR_MUL = (0, 1, 2, (2, 3), 3, 4, 7, 8)
DN_PER_REFLECTANCE = 0.3  # 11-bit DN per unit of reflectance x 10000


def _render_mul(land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """(8, H, W) float32 WorldView-3-like radiance in DN, flat-shaded per object.

    Each connected patch of one class (a roof, a lawn) gets its mean Sentinel-2 rendering
    times a random brightness. Per-pixel texture would make every demo image ~3 MB even
    deflated, for no gain: the detail pan-sharpening must restore is the objects' edges.
    """
    s2 = render_s2(land, rng).astype(np.float32)
    bands = np.stack(
        [s2[list(b)].mean(axis=0) if isinstance(b, tuple) else s2[b] for b in _S2_FOR_MUL]
    )
    objects = np.zeros(land.classes.shape, dtype=np.int64)  # 0-based object id per pixel
    total = 0
    for index in np.unique(land.classes):
        labelled, count = ndimage.label(land.classes == index)
        inside = labelled > 0
        objects[inside] = labelled[inside] - 1 + total
        total += count
    brightness = rng.uniform(0.85, 1.15, size=total)
    ids = np.arange(total)
    flat = [np.asarray(ndimage.mean(band, objects, index=ids)) * brightness for band in bands]
    return np.stack([means[objects] for means in flat]) * DN_PER_REFLECTANCE


def _to_dn(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, MAX_VALUE).astype(np.uint16)


def write_image(folder: Path, image_id: str, origin: tuple[float, float], rng) -> None:
    """Write PAN, MUL and MUL-PanSharpen for one image id into an AOI folder."""
    sharp = _render_mul(Landscape.generate(rng, SIZE, blob_scale=12.0), rng)
    crop = SIZE // MUL_FACTOR * MUL_FACTOR
    small = SIZE // MUL_FACTOR
    mul = sharp[:, :crop, :crop].reshape(8, small, MUL_FACTOR, small, MUL_FACTOR).mean(axis=(2, 4))
    pan = sharp[1:7].mean(axis=0, keepdims=True)
    noise = 3.0
    products = {
        "pan": _to_dn(pan + noise * rng.standard_normal(pan.shape)),
        "mul": _to_dn(mul + noise * rng.standard_normal(mul.shape)),
        "pansharpened": _to_dn(sharp),
    }
    west, north = origin
    fine = from_origin(west, north, PIXEL_DEG, PIXEL_DEG)
    coarse = from_origin(west, north, PIXEL_DEG * MUL_FACTOR, PIXEL_DEG * MUL_FACTOR)
    for role, data in products.items():
        product = PRODUCTS[role]
        transform = coarse if role == "mul" else fine
        path = folder / product / f"{product}_{image_id}.tif"
        write_raster(path, data, crs="EPSG:4326", transform=transform)


def demo_image_numbers(aoi: str, wanted: dict[str, int]) -> list[int]:
    """The smallest image numbers whose hash splits fill the wanted count per split."""
    left, numbers, number = dict(wanted), [], 0
    while any(left.values()):
        number += 1
        split = split_of(f"{aoi}_img{number}")
        if left.get(split, 0) > 0:
            left[split] -= 1
            numbers.append(number)
    return numbers


def write(root: Path, rng: np.random.Generator) -> None:
    """Write ``root/AOI_<n>_<City>_Train/{PAN,MUL,MUL-PanSharpen}/`` for the demo AOIs."""
    for aoi, ((west, north), wanted) in AOIS.items():
        for i, number in enumerate(demo_image_numbers(aoi, wanted)):
            origin = (west + i * SIZE * PIXEL_DEG, north)
            write_image(Path(root) / f"{aoi}_Train", f"{aoi}_img{number}", origin, rng)
