"""ISPRS Vaihingen 2D semantic labelling: IRRG true orthophotos, DSMs and 6-class ground truth.

Source: the ISPRS benchmark (request form, no redistribution): ``ISPRS_semantic_labeling_
Vaihingen.zip`` plus ``..._ground_truth_COMPLETE.zip`` and ``..._ground_truth_eroded_COMPLETE.
zip`` (Rottensteiner et al., "The ISPRS benchmark on urban object classification and 3D
building reconstruction", ISPRS Annals I-3, 2012). Layout after extraction (the two ground-truth
zips hold their files at the zip root, so they are extracted into folders of their own)::

    <root>/top/top_mosaic_09cm_area<N>.tif                       IR-R-G, uint8, 3 bands, 9 cm
    <root>/dsm/dsm_09cm_matching_area<N>.tif                      float32 metres, 1 band
    <root>/gts_complete/top_mosaic_09cm_area<N>.tif               colour-coded labels
    <root>/gts_eroded/top_mosaic_09cm_area<N>_noBoundary.tif      same, class borders black

Labels are decoded from colours to 0 impervious, 1 building, 2 low vegetation, 3 tree, 4 car,
5 clutter, and 255 (ignored) for the black borders of the eroded version; the eroded labels
are the benchmark's evaluation convention and the default here. Any other colour is an error
rather than a silent class, because it means a recompressed or wrong file.

Splits: ISPRS gives 16 training and 17 test areas. Only train/test exist upstream, so model
selection would otherwise peek at the test areas; two training areas (``val_areas``, default
34 and 37) are held out as ``"val"``. Pass ``val_areas=()`` to train on all 16 as the paper.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from msgfm.data.raster import read_raster
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.errors import DataError

ALL_AREAS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 20,
    21, 22, 23, 24, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 37, 38,
)  # fmt: skip
TRAIN_AREAS: tuple[int, ...] = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
TEST_AREAS: tuple[int, ...] = tuple(a for a in ALL_AREAS if a not in TRAIN_AREAS)
DEFAULT_VAL_AREAS: tuple[int, ...] = (34, 37)

CLASSES: tuple[str, ...] = (
    "impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter",
)  # fmt: skip
IGNORE_INDEX = 255
# Marks a colour code that no ISPRS class uses (never a valid class index, nor IGNORE_INDEX).
_UNKNOWN = 254
COLOURS: dict[tuple[int, int, int], int] = {
    (255, 255, 255): 0,
    (0, 0, 255): 1,
    (0, 255, 255): 2,
    (0, 255, 0): 3,
    (255, 255, 0): 4,
    (255, 0, 0): 5,
    (0, 0, 0): IGNORE_INDEX,
}
BANDS: tuple[str, ...] = ("IR", "R", "G")
LABEL_FOLDERS = {"eroded": "gts_eroded", "complete": "gts_complete"}
_TOP = re.compile(r"top_mosaic_09cm_area(\d+)\.tif")


def label_path(root: Path, area: int, labels: str) -> Path:
    """Where the chosen ground-truth version of an area lives after extraction."""
    suffix = "_noBoundary" if labels == "eroded" else ""
    return root / LABEL_FOLDERS[labels] / f"top_mosaic_09cm_area{area}{suffix}.tif"


def decode_labels(colours: np.ndarray, path: Path) -> np.ndarray:
    """Map a (3, H, W) uint8 colour-coded label image to (1, H, W) uint8 class indices.

    Every ISPRS colour has channels of 0 or 255 only, so a pixel's colour is one of 8 codes
    (one bit per channel): a lookup table over those codes decodes a 2000×2500 tile without
    sorting it (np.unique), and any channel value other than 0/255 is reported as unknown.
    """
    bits = colours >> 7
    codes = (bits[0] << 2 | bits[1] << 1 | bits[2]).astype(np.intp)
    lut = np.full(8, _UNKNOWN, dtype=np.uint8)
    for (r, g, b), label in COLOURS.items():
        lut[(r >> 7) << 2 | (g >> 7) << 1 | (b >> 7)] = label
    labels = lut[codes]
    bad = (labels == _UNKNOWN) | ((colours != 0) & (colours != 255)).any(axis=0)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        colour = tuple(int(c) for c in colours[:, y, x])
        count = int(np.count_nonzero((colours == np.array(colour)[:, None, None]).all(axis=0)))
        raise DataError(
            path,
            f"unknown label colour {colour} in {count} pixel(s) (first at row {y}, column {x});"
            f" expected one of {sorted(COLOURS)}",
        )
    return labels[None]


def split_of(area: int, val_areas: tuple[int, ...]) -> str:
    """The split of an ISPRS area number: test areas upstream, else train or held-out val."""
    if area in TEST_AREAS:
        return "test"
    return "val" if area in val_areas else "train"


class Vaihingen(DatasetReader):
    """One sample per area: ``rgb`` uint8 (3, H, W) holding IR-R-G, ``dsm`` float32 (1, H, W),
    ``label`` uint8 (1, H, W) with classes 0..5 and 255 ignored.

    ``split``: None (all), "train", "val" or "test". ``labels``: "eroded" (default) or
    "complete". ``val_areas``: training areas held out for validation.
    """

    name = "vaihingen"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        labels: str = "eroded",
        val_areas: tuple[int, ...] = DEFAULT_VAL_AREAS,
    ) -> None:
        super().__init__(root)
        if split not in (None, "train", "val", "test"):
            raise ValueError(f"split must be None, 'train', 'val' or 'test', not {split!r}")
        if labels not in LABEL_FOLDERS:
            raise ValueError(f"labels must be one of {sorted(LABEL_FOLDERS)}, not {labels!r}")
        stray = sorted(set(val_areas) - set(TRAIN_AREAS))
        if stray:
            raise ValueError(f"val_areas {stray} are not ISPRS training areas {TRAIN_AREAS}")
        self.labels = labels
        top = self.root / "top"
        for image in sorted(top.glob("top_mosaic_09cm_area*.tif")) if top.is_dir() else []:
            match = _TOP.fullmatch(image.name)
            if match is None:
                continue
            area = int(match.group(1))
            if area not in ALL_AREAS:
                raise DataError(image, f"area {area} is not one of the 33 ISPRS areas")
            area_split = split_of(area, tuple(val_areas))
            if split is None or split == area_split:
                self.refs.append(self._ref(image, area, area_split))
        self.refs.sort(key=lambda ref: ref.meta["area"])
        self.require_samples("top/top_mosaic_09cm_area1.tif (with dsm/ and gts_eroded/)")

    def _ref(self, image: Path, area: int, split: str) -> SampleRef:
        dsm = self.root / "dsm" / f"dsm_09cm_matching_area{area}.tif"
        label = label_path(self.root, area, self.labels)
        for path in (dsm, label):
            if not path.is_file():
                raise DataError(path, f"missing: area {area} has {image.name} but not this file")
        return SampleRef(
            sample_id=f"area{area}",
            files={"rgb": (image,), "dsm": (dsm,), "label": (label,)},
            split=split,
            meta={"area": area},
        )

    def read(self, ref: SampleRef) -> Sample:
        (image_path,) = ref.files["rgb"]
        (dsm_path,) = ref.files["dsm"]
        (label_file,) = ref.files["label"]
        image = read_raster(image_path, bands=3, dtypes=("uint8",)).data
        dsm = read_raster(dsm_path, bands=1, dtypes=("float32",)).data
        label = decode_labels(read_raster(label_file, bands=3, dtypes=("uint8",)).data, label_file)
        for path, array in ((dsm_path, dsm), (label_file, label)):
            if array.shape[1:] != image.shape[1:]:
                raise DataError(
                    path, f"size {array.shape[1:]} differs from {image_path.name} {image.shape[1:]}"
                )
        return Sample(
            sample_id=ref.sample_id,
            arrays={"rgb": image, "dsm": dsm, "label": label},
            split=ref.split,
            meta={"area": ref.meta["area"], "bands": BANDS, "labels": self.labels},
        )
