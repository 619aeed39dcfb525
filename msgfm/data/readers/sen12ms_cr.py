"""SEN12MS-CR: Sentinel-1 + cloudy Sentinel-2 → cloud-free Sentinel-2 (Ebel et al.).

Source: mediaTUM record 1554803 (https://mediatum.ub.tum.de/1554803), twelve archives
``ROIs{1158_spring,1868_summer,1970_fall,2017_winter}_{s1,s2,s2_cloudy}.tar.gz`` (no
checksums published). Citation: Ebel, Meraner, Schmitt, Zhu, "Multisensor data fusion for
cloud removal in global and all-season Sentinel-2 imagery", IEEE TGRS 2021.

Layout under ``root`` (= ``<data_root>/sen12ms_cr``), one folder per archive::

    ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p407.tif                float32 (2, 256, 256)
    ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p407.tif                uint16 (13, 256, 256)
    ROIs1158_spring_s2_cloudy/s2_cloudy_1/ROIs1158_spring_s2_cloudy_1_p407.tif  uint16 (13, ..)

Splits are by scene, as in the official loader (UnCRtainTS ``data/dataLoader.py``): the ten
validation and ten test scenes below, every other scene for training (155 on the full
dataset). Scenes are identified by parsing the whole ``s1_<n>`` folder name into
(season, n); the official loader matches the substring ``ROIs1158_spring_s1/s1_1``, which
also matches ``s1_106`` (a test scene) and so leaks test patches into training.
"""

from __future__ import annotations

import re
from pathlib import Path

from msgfm.data.readers.base import DatasetReader, Sample, SampleRef
from msgfm.data.readers.sen12ms import SEASONS, exists_in_listing, read_patch
from msgfm.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
VAL_SCENES: frozenset[tuple[str, int]] = frozenset(
    {
        ("ROIs2017_winter", 22), ("ROIs1868_summer", 19), ("ROIs1970_fall", 65),
        ("ROIs1158_spring", 17), ("ROIs2017_winter", 107), ("ROIs1868_summer", 80),
        ("ROIs1868_summer", 127), ("ROIs2017_winter", 130), ("ROIs1868_summer", 17),
        ("ROIs2017_winter", 84),
    }
)  # fmt: skip
TEST_SCENES: frozenset[tuple[str, int]] = frozenset(
    {
        ("ROIs1158_spring", 106), ("ROIs1158_spring", 123), ("ROIs1158_spring", 140),
        ("ROIs1158_spring", 31), ("ROIs1158_spring", 44), ("ROIs1868_summer", 119),
        ("ROIs1868_summer", 73), ("ROIs1970_fall", 139), ("ROIs2017_winter", 108),
        ("ROIs2017_winter", 63),
    }
)  # fmt: skip
# (role in Sample.arrays, source suffix of the folders and files, band count, dtype)
_SOURCES: tuple[tuple[str, str, int, str], ...] = (
    ("sar", "s1", 2, "float32"),
    ("s2", "s2", 13, "uint16"),
    ("s2_cloudy", "s2_cloudy", 13, "uint16"),
)
_SCENE_FOLDER = re.compile(r"^s1_(\d+)$")


def scene_split(season: str, scene: int) -> str:
    """The official split of a scene (whole-number match, never a substring match)."""
    if (season, scene) in TEST_SCENES:
        return "test"
    if (season, scene) in VAL_SCENES:
        return "val"
    return "train"


def patch_path(root: Path, season: str, source: str, scene: int, patch: int) -> Path:
    """The real file name of one patch of one source (s1, s2 or s2_cloudy)."""
    return (
        root
        / f"{season}_{source}"
        / f"{source}_{scene}"
        / f"{season}_{source}_{scene}_p{patch}.tif"
    )


class SEN12MSCR(DatasetReader):
    """Cloud-removal triplets of SEN12MS-CR, split by scene."""

    name = "SEN12MS-CR"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root)
        if split is not None and split not in SPLITS:
            raise ValueError(f"SEN12MS-CR split must be one of {SPLITS} or None, got {split!r}")
        self.split = split
        self._reject_unknown_folders()
        listings: dict[Path, set[str]] = {}
        refs = []
        for season in SEASONS:
            for scene, folder in self._scene_folders(season):
                if split is not None and scene_split(season, scene) != split:
                    continue
                refs.extend(self._scene_refs(season, scene, folder, listings))
        self.refs = sorted(refs, key=lambda r: (r.meta["season"], r.meta["scene"], r.meta["patch"]))
        self.require_samples(
            "ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p407.tif (+ _s2, _s2_cloudy)"
        )

    def _reject_unknown_folders(self) -> None:
        """A misnamed archive folder would silently drop a season: name it instead."""
        expected = {f"{season}_{source}" for season in SEASONS for _, source, _, _ in _SOURCES}
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith("ROIs") and entry.name not in expected:
                raise DataError(
                    entry, f"unexpected folder name; expected one of {sorted(expected)}"
                )

    def _scene_folders(self, season: str) -> list[tuple[int, Path]]:
        season_dir = self.root / f"{season}_s1"
        if not season_dir.is_dir():
            return []
        scenes = []
        for entry in season_dir.iterdir():
            if entry.name.startswith("."):
                continue
            match = _SCENE_FOLDER.match(entry.name)
            if match is None or not entry.is_dir():
                raise DataError(entry, "unexpected entry; expected scene folders named s1_<n>")
            scenes.append((int(match[1]), entry))
        return scenes

    def _scene_refs(
        self, season: str, scene: int, folder: Path, listings: dict[Path, set[str]]
    ) -> list[SampleRef]:
        pattern = re.compile(rf"^{season}_s1_{scene}_p(\d+)\.tif$")
        refs = []
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match is None:
                continue
            patch = int(match[1])
            files = {
                role: (patch_path(self.root, season, source, scene, patch),)
                for role, source, _, _ in _SOURCES
            }
            for (path,) in files.values():
                if not exists_in_listing(path, listings):
                    raise DataError(
                        path,
                        f"missing partner of {entry.name}; every S1 patch needs S2 + cloudy S2",
                    )
            refs.append(
                SampleRef(
                    sample_id=f"{season}_{scene}_p{patch}",
                    files=files,
                    split=scene_split(season, scene),
                    meta={"season": season, "scene": scene, "patch": patch},
                )
            )
        return refs

    def read(self, ref: SampleRef) -> Sample:
        """Read S1, clear S2 and cloudy S2 of one patch; SAR NaNs are kept for the tiler."""
        return read_patch(ref, _SOURCES)
