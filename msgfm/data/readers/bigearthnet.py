"""BigEarthNet v1 (Sentinel-2 + Sentinel-1 patches, multi-label) and the v2 metadata table.

Source: Zenodo record 12687186 (or bigearth.net): ``BigEarthNet-S2-v1.0.tar.gz`` (extracts to
``BigEarthNet-v1.0/``) and ``BigEarthNet-S1-v1.0.tar.gz``; train/val/test pairs from the
BigEarthNet-MM repository (git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models, ``splits/``).
Citations: Sumbul et al., "BigEarthNet: a large-scale benchmark archive for remote sensing
image understanding", IGARSS 2019; Sumbul et al., "BigEarthNet-MM", IEEE GRSM 2021.

Layout under ``root`` (= ``<data_root>/bigearthnet``)::

    BigEarthNet-v1.0/<S2>/<S2>_B01.tif … _B12.tif, _B8A.tif   uint16, 10/20/60 m: 120²/60²/20²
    BigEarthNet-v1.0/<S2>/<S2>_labels_metadata.json          labels (43 CLC names), coordinates, …
    BigEarthNet-S1-v1.0/<S1>/<S1>_VV.tif, _VH.tif             float32 dB 120²
    BigEarthNet-S1-v1.0/<S1>/<S1>_labels_metadata.json       … corresponding_s2_patch …
    splits/train.csv, splits/val.csv, splits/test.csv        no header, lines ``<S2>,<S1>``

Each band must have the size its resolution gives the 1.2 km patch (else the patch is refused,
naming the file and both sizes); the 20 m and 60 m bands are then resampled (bilinear) onto
the 10 m grid while reading, so every sample is one (13, 120, 120) stack in canonical order; B10 (cirrus) is not in
BigEarthNet and comes back as zeros with ``valid_bands["s2"]`` False there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from msgfm.data.raster import read_raster, require_overlap
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef, require_disjoint_splits
from msgfm.data.readers.bigearthnet_labels import targets_from_class19, targets_from_clc43
from msgfm.data.sensors import S2_BAND_METRES, S2_BANDS, SAR_BANDS, SAR_METRES, select_bands
from msgfm.errors import DataError

S2_FOLDER = "BigEarthNet-v1.0"
S1_FOLDER = "BigEarthNet-S1-v1.0"
SPLITS: tuple[str, ...] = ("train", "val", "test")
# The 12 bands BigEarthNet ships (all of S2 but B10), in canonical order.
BEN_S2_BANDS: tuple[str, ...] = tuple(band for band in S2_BANDS if band != "B10")
V2_COLUMNS: tuple[str, ...] = (
    "patch_id", "labels", "split", "s1_name", "contains_seasonal_snow", "contains_cloud_or_shadow",
)  # fmt: skip
# Every patch covers 1.2 km × 1.2 km (Sumbul et al. 2019), so a band's size follows from its
# resolution.
PATCH_METRES = 1200


def patch_shape(metres: int) -> tuple[int, int]:
    """(rows, cols) of a band of ``metres`` resolution over one BigEarthNet patch."""
    return PATCH_METRES // metres, PATCH_METRES // metres


# The 10 m grid every band is brought onto (S1 is stored on it already).
GRID = patch_shape(SAR_METRES)
# reBEN spells the validation split out; the rest of the pipeline says "val".
_V2_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def split_csv_path(root: Path, split: str) -> Path:
    """Where the BigEarthNet-MM pair list of ``split`` lives under a BigEarthNet root."""
    return root / "splits" / f"{split}.csv"


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(S2 name, S1 name) pairs from a BigEarthNet-MM split CSV (no header)."""
    if not path.is_file():
        raise DataError(
            path,
            "split CSV not found; fetch it from the BigEarthNet-MM repository "
            "(git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models, splits/)",
        )
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise DataError(path, f"line {number}: expected 'S2name,S1name', got {line!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def read_patch_names(path: Path) -> set[str]:
    """Patch names listed one per line (first CSV field), e.g. bigearth.net's snow/cloud lists."""
    if not path.is_file():
        raise DataError(path, "patch list not found")
    return {line.split(",")[0].strip() for line in path.read_text().splitlines() if line.strip()}


def read_metadata_json(path: Path) -> dict:
    """A ``*_labels_metadata.json`` with a readable error for a missing or broken file."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "label metadata JSON not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise DataError(path, "expected a JSON object with a 'labels' list")
    return meta


class BigEarthNet(DatasetReader):
    """BigEarthNet v1 S2 + S1 pairs with 19-class multi-hot targets.

    ``exclude_lists`` are files of S2 patch names to leave out, e.g. bigearth.net's
    ``patches_with_seasonal_snow.csv`` and ``patches_with_cloud_and_shadow.csv`` when a pair
    list other than BigEarthNet-MM's (which already omits them) is used.
    """

    name = "BigEarthNet"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        exclude_lists: Sequence[str | Path] = (),
    ) -> None:
        super().__init__(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"BigEarthNet split must be one of {SPLITS} or None, got {split!r}")
        self.split = split
        excluded = set().union(*(read_patch_names(Path(p)) for p in exclude_lists))
        s2_names = self._folder_names(S2_FOLDER, "BigEarthNet-S2-v1.0.tar.gz")
        s1_names = self._folder_names(S1_FOLDER, "BigEarthNet-S1-v1.0.tar.gz")
        csvs = {s: split_csv_path(self.root, s) for s in (SPLITS if split is None else (split,))}
        listed = {pair_split: read_pairs(csv) for pair_split, csv in csvs.items()}
        for side in (0, 1):  # S2 names, then S1 names: either repeated is a leak
            require_disjoint_splits({csvs[s]: [p[side] for p in pairs] for s, pairs in listed.items()})
        refs = []
        for pair_split, pairs in listed.items():
            csv = csvs[pair_split]
            for s2_name, s1_name in pairs:
                if s2_name in excluded:
                    continue
                for folder, name, present in (
                    (S2_FOLDER, s2_name, s2_names),
                    (S1_FOLDER, s1_name, s1_names),
                ):
                    if name not in present:
                        raise DataError(
                            self.root / folder / name, f"patch folder listed in {csv} not found"
                        )
                refs.append(self._ref(s2_name, s1_name, pair_split))
        self.refs = sorted(refs, key=lambda r: r.sample_id)
        self.require_samples(f"{S2_FOLDER}/<S2name>/<S2name>_B02.tif and splits/train.csv")

    def _folder_names(self, folder: str, archive: str) -> set[str]:
        path = self.root / folder
        if not path.is_dir():
            raise DataError(path, f"folder not found; extract {archive} into {self.root}")
        return {entry.name for entry in path.iterdir()}

    def _ref(self, s2_name: str, s1_name: str, split: str) -> SampleRef:
        s2_dir = self.root / S2_FOLDER / s2_name
        s1_dir = self.root / S1_FOLDER / s1_name
        return SampleRef(
            sample_id=s2_name,
            files={
                "s2": tuple(s2_dir / f"{s2_name}_{band}.tif" for band in BEN_S2_BANDS),
                "sar": tuple(s1_dir / f"{s1_name}_{band}.tif" for band in SAR_BANDS),
                "s2_meta": (s2_dir / f"{s2_name}_labels_metadata.json",),
                "sar_meta": (s1_dir / f"{s1_name}_labels_metadata.json",),
            },
            split=split,
            meta={"s2_name": s2_name, "s1_name": s1_name},
        )

    def read(self, ref: SampleRef) -> Sample:
        """Read one pair: S2 on the 10 m grid (13 bands, B10 invalid), S1, labels → target.

        Every band must have its resolution's size (120² at 10 m, 60² at 20 m, 20² at 60 m):
        a band of another size is a broken file, which resampling would only hide. S1 must
        lie on the ground its S2 partner covers.
        """
        labels = self._labels(ref)  # first: a mispaired CSV line is named by the S1 JSON
        s2_files = ref.files["s2"]
        s2_rasters = [
            read_raster(
                path, bands=1, dtypes=("uint16",), shape=patch_shape(S2_BAND_METRES[band]),
                out_shape=GRID,
            )
            for band, path in zip(BEN_S2_BANDS, s2_files, strict=True)
        ]  # fmt: skip
        stack = np.concatenate([raster.data for raster in s2_rasters])
        s2, s2_valid = select_bands(stack, BEN_S2_BANDS, S2_BANDS, source=str(s2_files[0].parent))
        sar_rasters = [
            read_raster(path, bands=1, dtypes=("float32",), shape=GRID, allow_nonfinite=True)
            for path in ref.files["sar"]
        ]
        # B02 is a 10 m band, read at its own size: its transform matches its pixels.
        require_overlap(sar_rasters[0], s2_rasters[BEN_S2_BANDS.index("B02")])
        sar = np.concatenate([raster.data for raster in sar_rasters])
        return Sample(
            sample_id=ref.sample_id,
            arrays={"s2": s2, "sar": sar},
            valid_bands={"s2": s2_valid, "sar": np.ones(len(SAR_BANDS), dtype=bool)},
            split=ref.split,
            meta={
                **ref.meta,
                "labels": labels,
                "target": targets_from_clc43(labels, source=ref.files["s2_meta"][0]),
            },
        )

    def _labels(self, ref: SampleRef) -> list[str]:
        """Labels from the S2 JSON, after checking the S1 JSON points back at this S2 patch."""
        s2_meta = read_metadata_json(ref.files["s2_meta"][0])
        s1_json = ref.files["sar_meta"][0]
        partner = read_metadata_json(s1_json).get("corresponding_s2_patch")
        if partner != ref.meta["s2_name"]:
            raise DataError(
                s1_json,
                f"corresponding_s2_patch is {partner!r}, but the split CSV pairs this S1 patch "
                f"with {ref.meta['s2_name']!r}",
            )
        return list(s2_meta["labels"])


def read_v2_metadata(path: str | Path, *, drop_snow_cloud: bool = False) -> pd.DataFrame:
    """reBEN (BigEarthNet v2) ``metadata.parquet`` with a 19-dim uint8 ``target`` per patch.

    Splits are renamed to the pipeline's train/val/test. ``drop_snow_cloud`` removes the
    patches flagged with seasonal snow or cloud/shadow, as the v1 benchmark splits do.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "metadata parquet not found")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, f"not a readable parquet file: {exc}") from exc
    missing = [column for column in V2_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected {list(V2_COLUMNS)}")
    unknown = sorted(set(frame["split"]) - set(_V2_SPLITS))
    if unknown:
        raise DataError(path, f"unknown split value(s) {unknown}; expected {sorted(_V2_SPLITS)}")
    require_disjoint_splits({path: frame["patch_id"].tolist()})
    frame = frame.assign(split=frame["split"].map(_V2_SPLITS))
    if drop_snow_cloud:
        flagged = frame["contains_seasonal_snow"] | frame["contains_cloud_or_shadow"]
        frame = frame.loc[~flagged.astype(bool)]
    targets = [targets_from_class19(labels, source=path) for labels in frame["labels"]]
    return frame.assign(target=targets).reset_index(drop=True)
