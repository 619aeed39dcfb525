"""SpaceNet 2 (building detection) imagery, used by msGFM for pan-sharpening.

Source: the public AWS bucket ``s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/``
(``SN2_buildings_train_AOI_<n>_<City>.tar.gz`` for Vegas, Paris, Shanghai, Khartoum; Van Etten
et al., "SpaceNet: A Remote Sensing Dataset and Challenge Series", arXiv:1807.01232).
WorldView-3 tiles of 200 m, one folder per AOI after extraction::

    <root>/AOI_2_Vegas_Train/PAN/PAN_AOI_2_Vegas_img<N>.tif            1 band, 650², 0.3 m
    <root>/AOI_2_Vegas_Train/MUL/MUL_AOI_2_Vegas_img<N>.tif            8 bands, ~162², 1.24 m
    <root>/AOI_2_Vegas_Train/MUL-PanSharpen/MUL-PanSharpen_AOI_2_Vegas_img<N>.tif
                                                                       8 bands, 650², 0.3 m

all uint16 holding 11-bit values. ``RGB-PanSharpen`` and the building labels are not needed for
pan-sharpening and are ignored; ``AOI_*_Test_public`` folders (imagery without labels) are
used like the training ones when present, since pan-sharpening needs no labels.

Split: the paper does not say how it split SpaceNet 2 for pan-sharpening, and the workflow
downloads the training tarballs only, so images are split deterministically by hashing their
id (``AOI_2_Vegas_img1``): 70 % train, 10 % val, 20 % test. A hash, unlike a seeded shuffle,
keeps an image's split fixed when AOIs are added or removed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from msgfm.data.raster import read_raster
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.errors import DataError

MUL_BANDS: tuple[str, ...] = (
    "coastal", "blue", "green", "yellow", "red", "red_edge", "nir1", "nir2",
)  # fmt: skip
PRODUCTS = {"pan": "PAN", "mul": "MUL", "pansharpened": "MUL-PanSharpen"}
BAND_COUNTS = {"pan": 1, "mul": len(MUL_BANDS), "pansharpened": len(MUL_BANDS)}
MAX_VALUE = 2047  # 11-bit radiometric resolution of WorldView-3
VAL_SHARE, TEST_SHARE = 0.1, 0.2
_AOI_FOLDER = re.compile(r"(AOI_\d+_[A-Za-z]+)_(Train|Test_public)")
_IMAGE = re.compile(r"PAN_(AOI_\d+_[A-Za-z]+)_img(\d+)\.tif")


def split_of(image_id: str, val_share: float = VAL_SHARE, test_share: float = TEST_SHARE) -> str:
    """The split of an image id, from the first 8 bytes of its SHA-256 as a number in [0, 1)."""
    position = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") / 2**64
    if position < test_share:
        return "test"
    return "val" if position < test_share + val_share else "train"


class SpaceNet2(DatasetReader):
    """One sample per image: ``pan`` uint16 (1, 650, 650), ``mul`` uint16 (8, ~162, ~162),
    ``pansharpened`` uint16 (8, 650, 650); meta ``aoi``, ``bands`` (MUL band names).

    ``split``: None (all), "train", "val" or "test" (see the module docstring).
    """

    name = "spacenet2"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root)
        if split not in (None, "train", "val", "test"):
            raise ValueError(f"split must be None, 'train', 'val' or 'test', not {split!r}")
        for folder in sorted(self.root.iterdir()):
            match = _AOI_FOLDER.fullmatch(folder.name)
            if match is None or not folder.is_dir():
                continue
            pan_folder = folder / PRODUCTS["pan"]
            for pan in sorted(pan_folder.glob("PAN_*.tif")) if pan_folder.is_dir() else []:
                image = _IMAGE.fullmatch(pan.name)
                if image is None or image.group(1) != match.group(1):
                    continue
                image_id = f"{image.group(1)}_img{image.group(2)}"
                image_split = split_of(image_id)
                if split is None or split == image_split:
                    self.refs.append(self._ref(folder, image_id, image_split, match.group(1)))
        self.refs.sort(key=lambda ref: (ref.meta["aoi"], ref.meta["number"], ref.meta["folder"]))
        self.require_samples(
            "AOI_2_Vegas_Train/PAN/PAN_AOI_2_Vegas_img1.tif (+ MUL, MUL-PanSharpen)"
        )

    @staticmethod
    def _ref(folder: Path, image_id: str, split: str, aoi: str) -> SampleRef:
        files: dict[str, tuple[Path, ...]] = {}
        for role, product in PRODUCTS.items():
            path = folder / product / f"{product}_{image_id}.tif"
            if not path.is_file():
                raise DataError(path, f"missing: {image_id} has a PAN image but no {product} image")
            files[role] = (path,)
        return SampleRef(
            sample_id=f"{folder.name}/{image_id}",
            files=files,
            split=split,
            meta={"aoi": aoi, "number": int(image_id.rsplit("img", 1)[1]), "folder": folder.name},
        )

    def read(self, ref: SampleRef) -> Sample:
        arrays = {
            role: read_raster(paths[0], bands=BAND_COUNTS[role], dtypes=("uint16",)).data
            for role, paths in ref.files.items()
        }
        if arrays["pan"].shape[1:] != arrays["pansharpened"].shape[1:]:
            raise DataError(
                ref.files["pansharpened"][0],
                f"size {arrays['pansharpened'].shape[1:]} differs from the PAN image "
                f"{arrays['pan'].shape[1:]}",
            )
        return Sample(
            sample_id=ref.sample_id,
            arrays=arrays,
            split=ref.split,
            meta={"aoi": ref.meta["aoi"], "bands": MUL_BANDS},
        )
