"""SEN12MS: co-registered Sentinel-1 / Sentinel-2 / MODIS land-cover triplets (Schmitt et al.).

Source: mediaTUM record 1474000 (https://mediatum.ub.tum.de/1474000, DOI
10.14459/2019mp1474000), twelve archives ``ROIs{1158_spring,1868_summer,1970_fall,
2017_winter}_{lc,s1,s2}.tar.gz``; split lists from https://github.com/schmitt-muc/SEN12MS
(``splits/train_list.txt``, ``splits/test_list.txt``). Citation: Schmitt, Hughes, Qiu, Zhu,
"SEN12MS – a curated dataset of georeferenced multi-spectral Sentinel-1/2 imagery for deep
learning and data fusion", ISPRS Annals 2019.

Layout under ``root`` (= ``<data_root>/sen12ms``), as the archives extract::

    ROIs1158_spring/s1_1/ROIs1158_spring_s1_1_p30.tif   float32 (2, 256, 256) VV, VH in dB
    ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif   uint16 (13, 256, 256) B01..B12
    ROIs1158_spring/lc_1/ROIs1158_spring_lc_1_p30.tif   uint16 (4, 256, 256) IGBP, LCCS LC/LU/SH
    splits/train_list.txt, splits/test_list.txt

The split lists stay in a ``splits/`` folder (our download rule puts them there) so that they
cannot be mistaken for a season folder. Each line names one S2 patch
(``ROIs1158_spring_s2_124_p100.tif``); the S1 and LC files follow by swapping the source.
The lists are the sample index: the train list omits the hold-out scenes and one damaged
triplet, so a patch on disk that no list names is not used. SAR pixels may be NaN; they are
kept here and repaired (and counted) by the tiler.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from msgfm.data.raster import read_raster, require_overlap
from msgfm.data.readers.base import DatasetReader, Sample, SampleRef, require_disjoint_splits
from msgfm.errors import DataError

SEASONS: tuple[str, ...] = (
    "ROIs1158_spring",
    "ROIs1868_summer",
    "ROIs1970_fall",
    "ROIs2017_winter",
)
SPLITS: tuple[str, ...] = ("train", "test")
# (role in Sample.arrays, source name in the file layout, band count, accepted dtype)
_SOURCES: tuple[tuple[str, str, int, str], ...] = (
    ("sar", "s1", 2, "float32"),
    ("s2", "s2", 13, "uint16"),
    ("lc", "lc", 4, "uint16"),
)
_LIST_ENTRY = re.compile(r"^(ROIs\d{4}_[a-z]+)_s2_(\d+)_p(\d+)\.tif$")


def split_list_path(root: Path, split: str) -> Path:
    """Where the official split list of ``split`` lives under a SEN12MS root."""
    return root / "splits" / f"{split}_list.txt"


def patch_path(root: Path, season: str, source: str, scene: int, patch: int) -> Path:
    """The real file name of one patch of one source (s1, s2 or lc)."""
    return root / season / f"{source}_{scene}" / f"{season}_{source}_{scene}_p{patch}.tif"


def triplet_id(season: str, scene: int, patch: int) -> str:
    """The id of one SEN12MS triplet, e.g. ``ROIs1158_spring_1_p30``."""
    return f"{season}_{scene}_p{patch}"


def parse_split_list(path: Path) -> list[tuple[str, int, int]]:
    """(season, scene, patch) for every line of an official SEN12MS split list."""
    if not path.is_file():
        raise DataError(
            path,
            "split list not found; download it from "
            "https://github.com/schmitt-muc/SEN12MS/tree/master/splits into this folder",
        )
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        match = _LIST_ENTRY.match(line)
        if match is None:
            raise DataError(
                path,
                f"line {number}: {line!r} is not an S2 patch name like "
                "ROIs1158_spring_s2_124_p100.tif",
            )
        entries.append((match[1], int(match[2]), int(match[3])))
    return entries


class SEN12MS(DatasetReader):
    """SAR + S2 + land-cover triplets of SEN12MS, indexed by the official split lists."""

    name = "SEN12MS"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"SEN12MS split must be one of {SPLITS} or None, got {split!r}")
        self.split = split
        listings: dict[Path, set[str]] = {}
        missing: list[Path] = []
        lists = {s: split_list_path(self.root, s) for s in (SPLITS if split is None else (split,))}
        listed = {list_split: parse_split_list(path) for list_split, path in lists.items()}
        require_disjoint_splits(
            {lists[s]: [triplet_id(*entry) for entry in entries] for s, entries in listed.items()}
        )
        refs = []
        for list_split, entries in listed.items():
            for season, scene, patch in entries:
                files = {
                    role: (patch_path(self.root, season, source, scene, patch),)
                    for role, source, _, _ in _SOURCES
                }
                absent = [f for (f,) in files.values() if not exists_in_listing(f, listings)]
                missing.extend(absent)
                if not absent:
                    refs.append(
                        SampleRef(
                            sample_id=triplet_id(season, scene, patch),
                            files=files,
                            split=list_split,
                            meta={"season": season, "scene": scene, "patch": patch},
                        )
                    )
        if missing:
            raise DataError(
                missing[0],
                f"file named by the split lists not found ({len(missing)} file(s) missing in "
                f"all); extract the ROIs*_{{s1,s2,lc}}.tar.gz archives into {self.root}",
            )
        self.refs = sorted(refs, key=lambda r: (r.meta["season"], r.meta["scene"], r.meta["patch"]))
        self.require_samples("ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p30.tif (+ s1_, lc_)")

    def read(self, ref: SampleRef) -> Sample:
        """Read one triplet; SAR NaNs are kept (the tiler repairs and counts them)."""
        return read_patch(ref, _SOURCES)


def read_patch(ref: SampleRef, sources: tuple[tuple[str, str, int, str], ...]) -> Sample:
    """Read the co-registered rasters of one SEN12MS(-CR) patch, checked for band count,
    dtype, a common grid and S1 lying where S2 is. Only SAR may hold NaN (no-data), which
    the tiler repairs."""
    rasters = {
        role: read_raster(
            ref.files[role][0], bands=bands, dtypes=(dtype,), allow_nonfinite=role == "sar"
        )
        for role, _, bands, dtype in sources
    }
    arrays = {role: raster.data for role, raster in rasters.items()}
    require_same_grid(arrays, ref)
    require_overlap(rasters["sar"], rasters["s2"])
    return Sample(
        sample_id=ref.sample_id,
        arrays=arrays,
        valid_bands={
            role: np.ones(arrays[role].shape[0], dtype=bool) for role in arrays if role != "lc"
        },
        split=ref.split,
        meta=dict(ref.meta),
    )


def exists_in_listing(path: Path, listings: dict[Path, set[str]]) -> bool:
    """File existence from one cached listing per folder: a stat per patch is slow on Lustre."""
    folder = path.parent
    if folder not in listings:
        listings[folder] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return path.name in listings[folder]


def require_same_grid(arrays: dict[str, np.ndarray], ref: SampleRef) -> None:
    """Paired sensors must cover the same pixels, or cross-sensor training learns noise."""
    shapes = {role: array.shape[1:] for role, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        first_role = next(iter(ref.files))
        raise DataError(
            ref.files[first_role][0],
            f"patch {ref.sample_id}: sources differ in size {shapes}; expected one pixel grid",
        )
