"""Demo ISPRS Vaihingen: IRRG orthophotos, DSMs and colour-coded labels that follow the pixels.

Each area is one Landscape whose latent classes become the six ISPRS classes (water and bare
soil count as clutter, as the ISPRS class definitions say; grass and crops as low vegetation),
plus cars painted as small rectangles on impervious ground, so that segmentation has real
signal: the IR-R-G colour and the DSM height both follow the label. Areas are reduced from
~2000x2500 to about 600x650 (still >= 512, so 512 crops with stride 256 fit), written in
both split halves and with the held-out validation area, with complete and eroded labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin
from scipy import ndimage

from msgfm.data.demo.landscape import CLASSES, Landscape, render_s2
from msgfm.data.raster import write_raster
from msgfm.data.readers.vaihingen import COLOURS, DEFAULT_VAL_AREAS, label_path

CRS = "EPSG:32632"
PIXEL_M = 0.09
VAIHINGEN_ELEVATION_M = 265.0
# Two training areas, one held-out validation area, two test areas.
DEMO_AREAS: tuple[int, ...] = (1, 3, DEFAULT_VAL_AREAS[-1], 2, 4)
CAR, IMPERVIOUS = 4, 0
# Latent Landscape class -> ISPRS class index (see the decode table in the reader).
_TO_ISPRS = {
    "water": 5, "forest": 3, "grassland": 2, "cropland": 2,
    "impervious": 0, "building": 1, "bare": 5,
}  # fmt: skip
_LATENT_TO_ISPRS = np.array([_TO_ISPRS[name] for name in CLASSES], dtype=np.uint8)
# Class index (0..5, 255) -> RGB colour, the inverse of the reader's table.
_CLASS_COLOUR = np.zeros((256, 3), dtype=np.uint8)
_CLASS_COLOUR[list(COLOURS.values())] = list(COLOURS.keys())
CAR_LENGTH_PX, CAR_WIDTH_PX = 18, 8


def _irrg(land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """False-colour IR-R-G uint8 from the Sentinel-2 rendering's B08, B04 and B03."""
    s2 = render_s2(land, rng)
    irrg = s2[[7, 3, 2]].astype(np.float32) * (255.0 * 2.2 / 10000.0)
    return np.clip(irrg, 0, 255).astype(np.uint8)


def _add_cars(
    label: np.ndarray, irrg: np.ndarray, dsm: np.ndarray, rng: np.random.Generator
) -> None:
    """Paint a few car-sized rectangles on impervious ground, in all three rasters."""
    height, width = label.shape
    rows, cols = np.nonzero(label == IMPERVIOUS)
    if rows.size == 0:
        return
    for pick in rng.choice(rows.size, size=min(12, rows.size), replace=False):
        h, w = (CAR_LENGTH_PX, CAR_WIDTH_PX)[:: 1 if rng.random() < 0.5 else -1]
        r0 = int(np.clip(rows[pick] - h // 2, 0, height - h))
        c0 = int(np.clip(cols[pick] - w // 2, 0, width - w))
        label[r0 : r0 + h, c0 : c0 + w] = CAR
        irrg[:, r0 : r0 + h, c0 : c0 + w] = rng.integers(40, 230, size=(3, 1, 1), dtype=np.uint8)
        dsm[0, r0 : r0 + h, c0 : c0 + w] += 1.5


def _eroded(label: np.ndarray) -> np.ndarray:
    """ISPRS-style eroded ground truth: class borders (a few pixels wide) become ignored."""
    border = np.zeros(label.shape, dtype=bool)
    border[:-1] |= label[:-1] != label[1:]
    border[:, :-1] |= label[:, :-1] != label[:, 1:]
    border = ndimage.binary_dilation(border, iterations=2)
    return np.where(border, np.uint8(255), label)


def _mosaic(rng: np.random.Generator, shape: tuple[int, int], parts: int = 4) -> Landscape:
    """Several Landscapes stitched along irregular borders, on the area's pixel grid.

    One Landscape is dominated by a few classes (its class weights are Dirichlet-drawn); a
    real Vaihingen tile mixes roofs, roads, lawns and trees everywhere, so a tile is
    assembled from ``parts`` Landscapes, each owning the region where its random field wins.
    They are generated at a quarter of the resolution and upsampled: smoothing at full
    resolution with blob sizes of tens of pixels costs seconds per area.
    """
    coarse = (shape[0] // 4 + 1, shape[1] // 4 + 1)
    lands = [Landscape.generate(rng, coarse) for _ in range(parts)]
    fields = [ndimage.gaussian_filter(rng.standard_normal(coarse), min(coarse) / 8) for _ in lands]
    owner = np.argmax(np.stack(fields), axis=0)
    classes = np.choose(owner, [land.classes for land in lands])
    return Landscape(classes=classes, terrain=lands[0].terrain).resized(shape)


def write_area(root: Path, area: int, rng: np.random.Generator) -> None:
    """Write one area's top, dsm and both ground-truth versions."""
    shape = (int(rng.integers(580, 640)), int(rng.integers(620, 700)))
    land = _mosaic(rng, shape)
    flat = VAIHINGEN_ELEVATION_M + 0.05 * (land.terrain - land.terrain.mean())
    land = Landscape(classes=land.classes, terrain=flat.astype(np.float32))
    label = _LATENT_TO_ISPRS[land.classes]
    irrg = _irrg(land, rng)
    height_above_ground = np.array([0.0, 12.0, 0.3, 15.0, 0.0, 1.0], dtype=np.float32)
    dsm = (land.terrain + height_above_ground[label])[None]
    _add_cars(label, irrg, dsm, rng)
    dsm = np.round(dsm + 0.05 * rng.standard_normal(dsm.shape), 2).astype(np.float32)
    transform = from_origin(496_000.0 + 60.0 * area, 5_420_000.0, PIXEL_M, PIXEL_M)
    write_raster(
        root / "top" / f"top_mosaic_09cm_area{area}.tif", irrg, crs=CRS, transform=transform
    )
    write_raster(
        root / "dsm" / f"dsm_09cm_matching_area{area}.tif", dsm, crs=CRS, transform=transform
    )
    for version, classes in (("complete", label), ("eroded", _eroded(label))):
        colours = np.ascontiguousarray(_CLASS_COLOUR[classes].transpose(2, 0, 1))
        write_raster(label_path(root, area, version), colours, crs=CRS, transform=transform)


def write(root: Path, rng: np.random.Generator) -> None:
    """Write the demo areas under ``root`` in the layout the reader documents."""
    for area in DEMO_AREAS:
        write_area(Path(root), area, rng)
