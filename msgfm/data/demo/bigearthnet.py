"""A small BigEarthNet v1 in the real layout: per-band S2 files, S1 files, label JSON, split CSVs.

Every patch is one structured Landscape under its own ``Acquisition`` rendered for S2 (10 m
bands at 120², 20 m bands block-averaged to 60², 60 m bands to 20², no B10) and for S1; its
CORINE labels are the classes covering at least ``LABEL_MIN_FRACTION`` of the patch, so the
19-class targets follow from the pixels (cropland only through its strips). 60 test patches
keep a cell's mAP from hinging on a handful of images; 10 % of train is 6 patches.
Impervious ground yields a road/rail label too, one of the CLC names the 19-class
nomenclature drops, so the demo exercises that path. JSON keys and value formats copy the
real files, including the S1 JSON's ``lly`` (sic) corner key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin

from msgfm.data.demo.landscape import CLASSES, Acquisition, Landscape, render_s2, render_sar
from msgfm.data.raster import write_raster
from msgfm.data.readers.bigearthnet import (
    BEN_S2_BANDS,
    PATCH_METRES,
    S1_FOLDER,
    S2_FOLDER,
    split_csv_path,
)
from msgfm.data.readers.bigearthnet_labels import CLC43_NAMES
from msgfm.data.sensors import S2_BAND_METRES, S2_BANDS, SAR_BANDS, SAR_METRES

PATCH_PIXELS = PATCH_METRES // SAR_METRES  # on the 10 m grid
LABEL_MIN_FRACTION = 0.05
BLOB_SCALE = 8.0  # class regions wide enough for 40-80 m field strips
PATCHES_PER_SPLIT = {"train": 60, "val": 12, "test": 60}
CLC_OF_CLASS: dict[str, tuple[str, ...]] = {
    "water": ("Water bodies",),
    "forest": ("Coniferous forest",),
    "grassland": ("Pastures",),
    "cropland": ("Non-irrigated arable land",),
    "impervious": ("Industrial or commercial units", "Road and rail networks and associated land"),
    "building": ("Discontinuous urban fabric",),
    "bare": ("Sparsely vegetated areas",),
}
# Two Sentinel-2 tiles with their Sentinel-1 partners, as in the real archive's naming.
_TILES = (
    {
        "s2": "S2A_MSIL2A_20170613T101031",
        "s1": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP",
        "epsg": 32633,
        "origin": (300000, 5400000),
        "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608.SAFE",
        "scene_source": "S1A_IW_GRDH_1SDV_20170613T165043_20170613T165108_017018_01C579_7EEC",
        "s2_date": "2017-06-13 10:10:31",
        "s1_time": "2017-06-13T16:50:43",
    },
    {
        "s2": "S2B_MSIL2A_20171221T112501",
        "s1": "S1A_IW_GRDH_1SDV_20171221T064238_29SND",
        "epsg": 32629,
        "origin": (499980, 4400040),
        "tile_source": "S2B_MSIL1C_20171221T112501_N0206_R037_T29SND_20171221T114356.SAFE",
        "scene_source": "S1A_IW_GRDH_1SDV_20171221T064238_20171221T064303_019797_021ACD_16F1",
        "s2_date": "2017-12-21 11:25:01",
        "s1_time": "2017-12-21T06:42:38",
    },
)


def write(root: Path, rng: np.random.Generator) -> None:
    """Write the demo BigEarthNet v1 (S2 + S1 + splits) into ``root``."""
    root = Path(root)
    number = 0
    for split, count in PATCHES_PER_SPLIT.items():
        pairs = []
        for _ in range(count):
            tile = _TILES[number % len(_TILES)]
            row, col = divmod(number, 10)
            number += 1
            s2_name = f"{tile['s2']}_{row}_{col}"
            s1_name = f"{tile['s1']}_{row}_{col}"
            _write_patch(root, rng, tile, s2_name, s1_name, row, col)
            pairs.append(f"{s2_name},{s1_name}\n")
        csv = split_csv_path(root, split)
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("".join(pairs))


def labels_of(land: Landscape) -> list[str]:
    """CORINE names of the classes covering enough of the patch, in CLC order as real files."""
    present = set()
    for name, fraction in zip(CLASSES, land.fractions(), strict=True):
        if fraction >= LABEL_MIN_FRACTION:
            present.update(CLC_OF_CLASS[name])
    return [label for label in CLC43_NAMES if label in present]


def _write_patch(
    root: Path,
    rng: np.random.Generator,
    tile: dict,
    s2_name: str,
    s1_name: str,
    row: int,
    col: int,
) -> None:
    land = Landscape.generate(rng, PATCH_PIXELS, blob_scale=BLOB_SCALE).with_structure(rng)
    acquisition = Acquisition.draw(rng)
    ulx = tile["origin"][0] + col * PATCH_PIXELS * 10
    uly = tile["origin"][1] - row * PATCH_PIXELS * 10
    crs = CRS.from_epsg(tile["epsg"])
    s2 = render_s2(land, rng, acquisition=acquisition)
    s2_dir = root / S2_FOLDER / s2_name
    for band in BEN_S2_BANDS:
        metres = S2_BAND_METRES[band]
        factor = metres // 10
        data = s2[S2_BANDS.index(band)]
        coarse = data.reshape(PATCH_PIXELS // factor, factor, -1, factor).mean(axis=(1, 3))
        write_raster(
            s2_dir / f"{s2_name}_{band}.tif",
            np.rint(coarse)[None].astype(np.uint16),
            crs=crs,
            transform=from_origin(ulx, uly, metres, metres),
        )
    sar = render_sar(land, rng, acquisition=acquisition)
    s1_dir = root / S1_FOLDER / s1_name
    for index, band in enumerate(SAR_BANDS):
        write_raster(
            s1_dir / f"{s1_name}_{band}.tif",
            sar[index : index + 1],
            crs=crs,
            transform=from_origin(ulx, uly, 10, 10),
        )
    labels = labels_of(land)
    lrx, lry = ulx + PATCH_PIXELS * 10, uly - PATCH_PIXELS * 10
    projection = crs.to_wkt()
    s2_meta = {
        "labels": labels,
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": lrx, "lry": lry},
        "projection": projection,
        "tile_source": tile["tile_source"],
        "acquisition_date": tile["s2_date"],
    }
    s1_meta = {
        "labels": labels,
        "coordinates": {"ulx": ulx, "uly": uly, "lrx": lrx, "lly": lry},
        "projection": projection,
        "corresponding_s2_patch": s2_name,
        "scene_source": tile["scene_source"],
        "acquisition_time": tile["s1_time"],
    }
    (s2_dir / f"{s2_name}_labels_metadata.json").write_text(json.dumps(s2_meta))
    (s1_dir / f"{s1_name}_labels_metadata.json").write_text(json.dumps(s1_meta))
