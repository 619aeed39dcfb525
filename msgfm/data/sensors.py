"""The four sensor modalities of msGFM, their bands by name, and their value handling.

Bands are addressed by name, never by position, because the datasets disagree on what they
ship: SEN12MS has all 13 Sentinel-2 bands, BigEarthNet has 12 (no B10), Vaihingen's "RGB" is
IR-R-G. A dataset that lacks a band gets zeros there plus a per-band validity mask, so one
patch embedding per sensor serves every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msgfm.errors import DataError

S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
SAR_BANDS: tuple[str, ...] = ("VV", "VH")
# Pixel size in metres of each Sentinel-2 band (10 m visible/NIR, 20 m red-edge/SWIR, 60 m
# atmospheric) and of Sentinel-1 IW GRD products: the size a patch of a given extent has in
# each band, which readers check instead of resampling whatever arrives.
S2_BAND_METRES: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip
SAR_METRES = 10
RGB_BANDS: tuple[str, ...] = ("R", "G", "B")
DSM_BANDS: tuple[str, ...] = ("DSM",)

# ImageNet statistics, as GFM/SimMIM normalise RGB; the sensor-specific scalings of
# msgfm.data.normalize map the other sensors to [0, 1] first.
RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

S2_MAX_REFLECTANCE = 10000.0
SAR_DB_RANGE = (-25.0, 0.0)
# σ0 values a radar can return at all: below -100 dB lies far under any sensor's noise floor
# (~-25 dB for Sentinel-1), above +60 dB a pixel would return a million times the power that
# falls on it. Values outside (e.g. a float32 fill of 3e38) are errors, repaired like NaN.
SAR_DB_PLAUSIBLE = (-100.0, 60.0)


@dataclass(frozen=True)
class Sensor:
    """A sensor modality: its canonical band names and the dtype its shards store."""

    name: str
    bands: tuple[str, ...]
    dtype: str

    @property
    def channels(self) -> int:
        return len(self.bands)


SENSORS: dict[str, Sensor] = {
    "rgb": Sensor("rgb", RGB_BANDS, "uint8"),
    "s2": Sensor("s2", S2_BANDS, "uint16"),
    "sar": Sensor("sar", SAR_BANDS, "float32"),
    "dsm": Sensor("dsm", DSM_BANDS, "float32"),
}


def select_bands(
    array: np.ndarray,
    have: Sequence[str],
    want: Sequence[str],
    *,
    source: str = "<array>",
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a (C, H, W) array from the band names it ``have``s to those we ``want``.

    Bands in ``want`` that the data lacks are filled with zeros and flagged invalid in the
    returned boolean mask of shape (len(want),). Extra bands are dropped.
    """
    if array.ndim != 3 or array.shape[0] != len(have):
        raise DataError(
            source, f"expected {len(have)} bands {list(have)}, got array of shape {array.shape}"
        )
    position = {band: i for i, band in enumerate(have)}
    out = np.zeros((len(want), *array.shape[1:]), dtype=array.dtype)
    valid = np.zeros(len(want), dtype=bool)
    for i, band in enumerate(want):
        if band in position:
            out[i] = array[position[band]]
            valid[i] = True
    return out, valid
