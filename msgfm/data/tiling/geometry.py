"""Window positions, crops and resizing shared by the pretraining and downstream tilers.

Crops are views (no copy); resizing goes through Pillow, which antialiases when shrinking
(its filters widen with the scale factor), so a window resized from 768 to 384 px does not
alias, and which is several times faster than scipy's zoom on large rasters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from msgfm.errors import DataError

# Pillow modes that hold one band of a numpy dtype without conversion.
_PIL_MODES = {np.dtype(np.uint8): "L", np.dtype(np.float32): "F"}


def centre_crop(array: np.ndarray, size: int, *, source: str | Path = "<array>") -> np.ndarray:
    """The central ``size`` × ``size`` pixels of a (C, H, W) array, as a view.

    ``source`` is the file the array came from: a tile larger than the patch is a setting
    that does not fit the data, and the user needs to know which file showed it.
    """
    height, width = array.shape[-2:]
    if height < size or width < size:
        raise DataError(
            source,
            f"{height}x{width} px, smaller than the {size}x{size} tile; expected a tile no "
            "larger than the source patches (lower the tile setting)",
        )
    top, left = (height - size) // 2, (width - size) // 2
    return array[..., top : top + size, left : left + size]


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) scaled so the shorter side is ``size`` (aspect ratio kept, rounded)."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def resize(array: np.ndarray, shape: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize a (C, H, W) array band by band to ``shape`` = (H', W'), keeping its dtype.

    Bilinear (antialiased when shrinking) by default; ``nearest`` for class labels. Integer
    bands other than uint8 are resampled as float32 and rounded back. Returns the input
    itself when the shape already matches.
    """
    if tuple(array.shape[-2:]) == tuple(shape):
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    out = np.empty((array.shape[0], *shape), dtype=array.dtype)
    mode = _PIL_MODES.get(array.dtype)
    for band in range(array.shape[0]):
        plane = array[band] if mode else array[band].astype(np.float32)
        image = Image.fromarray(np.ascontiguousarray(plane), mode=mode or "F")
        resized = np.asarray(image.resize((shape[1], shape[0]), resample=resample))
        if mode is None and np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(array.dtype)
            resized = np.clip(np.rint(resized), info.min, info.max)
        out[band] = resized
    return out


def grid_starts(length: int, window: int, stride: int, *, cover_border: bool) -> list[int]:
    """Start offsets of windows along one axis.

    With ``cover_border`` (segmentation, where every pixel must be predicted for stitching)
    a last window is aligned to the far edge when the stride leaves a strip uncovered, and
    an axis shorter than the window gets one window at 0 (the caller pads). Without it only
    whole windows inside the axis are returned.
    """
    if length <= window:
        return [0] if cover_border or length == window else []
    starts = list(range(0, length - window + 1, stride))
    if cover_border and starts[-1] + window < length:
        starts.append(length - window)
    return starts


def windows(
    height: int, width: int, window: int, stride: int, *, cover_border: bool
) -> list[tuple[int, int]]:
    """(y, x) upper-left corners in raster order (row by row): a deterministic tile order."""
    ys = grid_starts(height, window, stride, cover_border=cover_border)
    xs = grid_starts(width, window, stride, cover_border=cover_border)
    return [(y, x) for y in ys for x in xs]


def pad_to(array: np.ndarray, size: int, value: float) -> np.ndarray:
    """Pad a (C, H, W) array at the bottom/right to at least ``size`` × ``size``."""
    height, width = array.shape[-2:]
    if height >= size and width >= size:
        return array
    pad = ((0, 0), (0, max(0, size - height)), (0, max(0, size - width)))
    return np.pad(array, pad, constant_values=value)
