"""The BigEarthNet reader on real BigEarthNet v1 patches.

The sdist of ``bigearthnet-encoder`` 0.3.0 on PyPI ships, in its ``tests/`` folder, three
real S2 patches (``s2-tiny``) and six real S1 patches (``s1-tiny``), three of which pair
with those S2 patches through their JSON's ``corresponding_s2_patch``. We lay them out as
``<root>/BigEarthNet-v1.0`` and ``<root>/BigEarthNet-S1-v1.0`` (symlinks), write split CSVs
in the BigEarthNet-MM format, and check what the reader makes of them; we also check that
the demo generator writes the same files, keys and rasters as the real archive.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from registry_access import run_pip_or_skip

from msgfm.data.demo import bigearthnet as demo_ben
from msgfm.data.raster import read_raster
from msgfm.data.readers.bigearthnet import (
    BEN_S2_BANDS,
    S1_FOLDER,
    S2_FOLDER,
    BigEarthNet,
    split_csv_path,
)
from msgfm.data.readers.bigearthnet_labels import CLASS19_NAMES
from msgfm.data.sensors import S2_BANDS
from msgfm.errors import DataError

pytestmark = pytest.mark.network

SDIST = "bigearthnet-encoder==0.3.0"
S2_4_55 = "S2A_MSIL2A_20170617T113321_4_55"
S2_36_85 = "S2A_MSIL2A_20170617T113321_36_85"
S2_56_35 = "S2A_MSIL2A_20171221T112501_56_35"
S1_4_55 = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55"
S1_36_85 = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"
S1_56_35 = "S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35"
PAIRS = {"train": (S2_36_85, S1_36_85), "val": (S2_4_55, S1_4_55), "test": (S2_56_35, S1_56_35)}


@pytest.fixture(scope="session")
def real_patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extracted ``tests/`` folder of the sdist, downloaded once per session."""
    target = tmp_path_factory.mktemp("bigearthnet-encoder")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--dest", str(target), SDIST,
    ]  # fmt: skip
    run_pip_or_skip(command, SDIST)
    (archive,) = target.glob("bigearthnet*encoder-0.3.0.tar.gz")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/s" in m.name]
        tar.extractall(target, members=members, filter="data")
    (tests_dir,) = target.glob("*/tests")
    return tests_dir


def _layout(real_patches: Path, root: Path, pairs: dict[str, tuple[str, str]]) -> Path:
    """The real patches as the reader expects them, with one split CSV per entry of ``pairs``."""
    for tiny, folder in (("s2-tiny", S2_FOLDER), ("s1-tiny", S1_FOLDER)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for patch in (real_patches / tiny).iterdir():
            (root / folder / patch.name).symlink_to(patch, target_is_directory=True)
    for split, (s2_name, s1_name) in pairs.items():
        split_csv_path(root, split).parent.mkdir(exist_ok=True)
        split_csv_path(root, split).write_text(f"{s2_name},{s1_name}\n")
    return root


@pytest.fixture
def real_root(real_patches: Path, tmp_path: Path) -> Path:
    return _layout(real_patches, tmp_path / "bigearthnet", PAIRS)


def test_shipped_pairs_are_the_ones_we_list(real_patches: Path) -> None:
    shipped_s2 = {p.name for p in (real_patches / "s2-tiny").iterdir()}
    pairs = set()
    for s1_dir in (real_patches / "s1-tiny").iterdir():
        meta = json.loads((s1_dir / f"{s1_dir.name}_labels_metadata.json").read_text())
        if meta["corresponding_s2_patch"] in shipped_s2:
            pairs.add((meta["corresponding_s2_patch"], s1_dir.name))
    assert pairs == set(PAIRS.values())


def test_reader_finds_the_real_pairs_by_split(real_root: Path) -> None:
    reader = BigEarthNet(real_root)
    assert [(r.sample_id, r.split) for r in reader.refs] == [
        (S2_36_85, "train"), (S2_4_55, "val"), (S2_56_35, "test"),
    ]  # fmt: skip
    assert [r.meta["s1_name"] for r in BigEarthNet(real_root, "val").refs] == [S1_4_55]


def test_real_rasters_come_back_on_the_10m_grid(real_root: Path) -> None:
    reader = BigEarthNet(real_root)
    for ref in reader.refs:
        sample = reader.read(ref)
        s2, sar = sample.arrays["s2"], sample.arrays["sar"]
        assert (s2.dtype, s2.shape) == (np.uint16, (13, 120, 120))
        assert (sar.dtype, sar.shape) == (np.float32, (2, 120, 120))
        b10 = S2_BANDS.index("B10")
        assert not s2[b10].any()
        assert sample.valid_bands["s2"].tolist() == [band != "B10" for band in S2_BANDS]
        assert np.isfinite(sar).all() and -50 < float(np.median(sar)) < 5  # σ0 in dB
        files = dict(zip(BEN_S2_BANDS, ref.files["s2"], strict=True))
        # 10 m bands pass through untouched; 20 m and 60 m bands keep their mean.
        assert np.array_equal(s2[S2_BANDS.index("B04")], read_raster(files["B04"]).data[0])
        for band, native_shape in (("B05", (60, 60)), ("B8A", (60, 60)), ("B09", (20, 20))):
            native = read_raster(files[band]).data[0]
            assert native.shape == native_shape
            resampled = s2[S2_BANDS.index(band)].astype(np.float64)
            assert abs(resampled.mean() - native.mean()) < 0.03 * native.mean() + 1, band
        vv = read_raster(ref.files["sar"][0]).data[0]
        assert ref.files["sar"][0].name.endswith("_VV.tif") and np.array_equal(sar[0], vv)


def test_real_labels_map_to_19_classes(real_root: Path) -> None:
    reader = BigEarthNet(real_root)
    targets = {}
    for ref in reader.refs:
        sample = reader.read(ref)
        assert sample.meta["target"].dtype == np.uint8
        targets[ref.sample_id] = {CLASS19_NAMES[i] for i in np.flatnonzero(sample.meta["target"])}
    assert targets == {
        S2_36_85: {"Arable land", "Pastures"},
        S2_4_55: {"Pastures"},
        S2_56_35: {
            "Complex cultivation patterns",
            "Land principally occupied by agriculture, with significant areas of natural "
            "vegetation",
            "Broad-leaved forest",
            "Transitional woodland, shrub",
        },
    }
    first = reader.read(reader.refs[0])
    assert first.meta["labels"] == ["Non-irrigated arable land", "Pastures"]


def test_demo_writes_what_the_real_archive_holds(real_patches: Path, tmp_path: Path) -> None:
    demo_ben.write(tmp_path, np.random.default_rng(0))
    demo_s2 = next((tmp_path / S2_FOLDER).iterdir())
    demo_s1 = next((tmp_path / S1_FOLDER).iterdir())
    real_s2 = real_patches / "s2-tiny" / S2_4_55
    real_s1 = real_patches / "s1-tiny" / S1_4_55
    for demo_dir, real_dir in ((demo_s2, real_s2), (demo_s1, real_s1)):
        suffixes = {p.name.removeprefix(demo_dir.name) for p in demo_dir.iterdir()}
        assert suffixes == {p.name.removeprefix(real_dir.name) for p in real_dir.iterdir()}
        demo_json = json.loads((demo_dir / f"{demo_dir.name}_labels_metadata.json").read_text())
        real_json = json.loads((real_dir / f"{real_dir.name}_labels_metadata.json").read_text())
        assert demo_json.keys() == real_json.keys()
        assert demo_json["coordinates"].keys() == real_json["coordinates"].keys()
        for suffix in sorted(s for s in suffixes if s.endswith(".tif")):
            demo = read_raster(demo_dir / f"{demo_dir.name}{suffix}")
            real = read_raster(real_dir / f"{real_dir.name}{suffix}")
            assert (demo.data.dtype, demo.data.shape) == (real.data.dtype, real.data.shape), suffix
            assert demo.transform.a == real.transform.a, suffix


def test_mispaired_csv_names_the_s1_json(real_patches: Path, tmp_path: Path) -> None:
    root = _layout(real_patches, tmp_path, {"train": (S2_4_55, S1_36_85)})
    reader = BigEarthNet(root, "train")
    with pytest.raises(DataError, match=f"corresponding_s2_patch is '{S2_36_85}'") as info:
        reader.read(reader.refs[0])
    assert info.value.path.name == f"{S1_36_85}_labels_metadata.json"


def test_pair_without_shipped_s2_is_named(real_patches: Path, tmp_path: Path) -> None:
    s1_name = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"
    s2_name = "S2A_MSIL2A_20170613T101031_61_39"  # its corresponding_s2_patch: not in the sdist
    root = _layout(real_patches, tmp_path, {"test": (s2_name, s1_name)})
    with pytest.raises(DataError, match=r"patch folder listed in .*test\.csv not found") as info:
        BigEarthNet(root, "test")
    assert info.value.path == root / S2_FOLDER / s2_name


def test_truncated_real_band_names_the_file(real_patches: Path, tmp_path: Path) -> None:
    root = _layout(real_patches, tmp_path, {"val": PAIRS["val"]})
    (root / S2_FOLDER / S2_4_55).unlink()
    shutil.copytree(real_patches / "s2-tiny" / S2_4_55, root / S2_FOLDER / S2_4_55)
    band = root / S2_FOLDER / S2_4_55 / f"{S2_4_55}_B03.tif"
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 2])
    reader = BigEarthNet(root, "val")
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        reader.read(reader.refs[0])
    assert info.value.path == band
