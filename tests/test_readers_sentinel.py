"""SEN12MS, SEN12MS-CR and BigEarthNet readers on demo data and on hand-made bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rasterio.transform import from_origin
from scipy import ndimage

from msgfm.data.demo import bigearthnet as demo_ben
from msgfm.data.demo import sen12ms as demo_sen12ms
from msgfm.data.demo import sen12ms_cr as demo_cr
from msgfm.data.raster import read_raster, write_raster
from msgfm.data.readers import sen12ms_cr
from msgfm.data.readers.bigearthnet import (
    BEN_S2_BANDS,
    S1_FOLDER,
    S2_FOLDER,
    BigEarthNet,
    read_v2_metadata,
    split_csv_path,
)
from msgfm.data.readers.bigearthnet_labels import (
    CLASS19_NAMES,
    CLC43_NAMES,
    CLC43_TO_19,
    targets_from_clc43,
)
from msgfm.data.readers.sen12ms import SEN12MS, split_list_path
from msgfm.data.readers.sen12ms_cr import SEN12MSCR, scene_split
from msgfm.data.sensors import S2_BANDS
from msgfm.errors import DataError

SPRING = "ROIs1158_spring"
TRANSFORM = from_origin(500000, 5000000, 10, 10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sentinel-demo")
    demo_sen12ms.write(root / "sen12ms", np.random.default_rng(1))
    demo_cr.write(root / "sen12ms_cr", np.random.default_rng(2))
    demo_ben.write(root / "bigearthnet", np.random.default_rng(3))
    return root


def _tif(path: Path, data: np.ndarray) -> None:
    write_raster(path, data, crs="EPSG:32633", transform=TRANSFORM)


def _sen12ms_root(root: Path, *, s2: np.ndarray | None = None) -> Path:
    """One 16-px SEN12MS triplet (spring scene 1 patch 30) listed in train, none in test."""
    _tif(root / SPRING / "s1_1" / f"{SPRING}_s1_1_p30.tif", np.full((2, 16, 16), -10, np.float32))
    _tif(
        root / SPRING / "s2_1" / f"{SPRING}_s2_1_p30.tif",
        np.full((13, 16, 16), 1000, np.uint16) if s2 is None else s2,
    )
    _tif(root / SPRING / "lc_1" / f"{SPRING}_lc_1_p30.tif", np.full((4, 16, 16), 10, np.uint16))
    split_list_path(root, "train").parent.mkdir(parents=True, exist_ok=True)
    split_list_path(root, "train").write_text(f"{SPRING}_s2_1_p30.tif\n")
    split_list_path(root, "test").write_text("")
    return root


def _cr_patch(root: Path, scene: int, patch: int, value: int) -> None:
    """A 16-px SEN12MS-CR patch whose pixels all equal ``value`` (to trace which file is read)."""
    for source, bands, dtype in (
        ("s1", 2, np.float32),
        ("s2", 13, np.uint16),
        ("s2_cloudy", 13, np.uint16),
    ):
        path = sen12ms_cr.patch_path(root, SPRING, source, scene, patch)
        _tif(path, np.full((bands, 16, 16), value, dtype))


def _explained_variance(s2: np.ndarray, sar: np.ndarray) -> float:
    """R² of a linear fit of (smoothed) VV from the 13 S2 bands.

    Each land-cover class has its own spectrum and backscatter, so on a shared Landscape
    the spectra predict the backscatter; on two unrelated Landscapes they cannot.
    """
    features = ndimage.uniform_filter(s2.astype(np.float32), (1, 5, 5))[:, ::4, ::4]
    features = features.reshape(13, -1).T
    vv = ndimage.uniform_filter(np.nan_to_num(sar[0]), 5)[::4, ::4].ravel()
    design = np.c_[features, np.ones(len(features))]
    coef, *_ = np.linalg.lstsq(design, vv, rcond=None)
    return 1.0 - float(np.var(vv - design @ coef) / np.var(vv))


# ---------------------------------------------------------------- SEN12MS on demo data


def test_sen12ms_demo_splits_follow_the_lists(demo: Path) -> None:
    train, test = SEN12MS(demo / "sen12ms", "train"), SEN12MS(demo / "sen12ms", "test")
    assert (len(train), len(test)) == (48, 16)
    scenes = {
        split: {(r.meta["season"], r.meta["scene"]) for r in d.refs}
        for split, d in (("train", train), ("test", test))
    }
    assert scenes["test"] == set(demo_sen12ms.TEST_SCENES)
    assert not scenes["train"] & scenes["test"]
    assert len(SEN12MS(demo / "sen12ms")) == 64
    lines = split_list_path(demo / "sen12ms", "train").read_text().splitlines()
    assert lines == sorted(lines)
    assert all(re.fullmatch(r"ROIs\d{4}_[a-z]+_s2_\d+_p\d+\.tif", line) for line in lines)


def test_sen12ms_demo_triplets_share_one_landscape(demo: Path) -> None:
    reader = SEN12MS(demo / "sen12ms")
    samples = [reader.read(ref) for ref in reader.refs[::2]]
    first = samples[0]
    assert first.arrays["sar"].dtype == np.float32 and first.arrays["sar"].shape == (2, 256, 256)
    assert first.arrays["s2"].dtype == np.uint16 and first.arrays["s2"].shape == (13, 256, 256)
    assert first.arrays["lc"].dtype == np.uint16 and first.arrays["lc"].shape == (4, 256, 256)
    assert first.valid_bands["s2"].all() and first.valid_bands["sar"].all()
    matched = [_explained_variance(s.arrays["s2"], s.arrays["sar"]) for s in samples]
    shuffled = [
        _explained_variance(a.arrays["s2"], b.arrays["sar"])
        for a, b in zip(samples, samples[1:] + samples[:1], strict=True)
    ]
    assert np.median(matched) > 0.8 and max(shuffled) < 0.1


def test_sen12ms_keeps_sar_nan_for_the_tiler(demo: Path) -> None:
    reader = SEN12MS(demo / "sen12ms")
    nan_counts = [int(np.isnan(reader.read(ref).arrays["sar"]).sum()) for ref in reader.refs]
    assert any(nan_counts), "the demo must contain S1 patches with NaN, as the real data does"
    assert all(count <= 10 for count in nan_counts)


# ---------------------------------------------------------------- SEN12MS-CR


def test_cr_demo_splits_by_official_scene(demo: Path) -> None:
    by_split = {
        split: {
            (r.meta["season"], r.meta["scene"]) for r in SEN12MSCR(demo / "sen12ms_cr", split).refs
        }
        for split in ("train", "val", "test")
    }
    assert by_split == {
        "train": {(SPRING, 1), (SPRING, 10)},
        "val": {(SPRING, 17), ("ROIs1970_fall", 65)},
        "test": {(SPRING, 106), ("ROIs1868_summer", 73)},
    }
    sample = SEN12MSCR(demo / "sen12ms_cr", "test").refs[0]
    read = SEN12MSCR(demo / "sen12ms_cr").read(sample)
    assert {k: (v.dtype.name, v.shape) for k, v in read.arrays.items()} == {
        "sar": ("float32", (2, 256, 256)),
        "s2": ("uint16", (13, 256, 256)),
        "s2_cloudy": ("uint16", (13, 256, 256)),
    }
    # Clouds whiten the image: the cloudy acquisition is brighter in the visible bands.
    blue = S2_BANDS.index("B02")
    assert read.arrays["s2_cloudy"][blue].mean() > read.arrays["s2"][blue].mean() + 300


def test_cr_scene_matching_uses_the_whole_folder_name(tmp_path: Path) -> None:
    for scene, value in ((1, 11), (10, 22), (100, 33), (106, 44)):
        _cr_patch(tmp_path, scene, patch=5, value=value)
    reader = SEN12MSCR(tmp_path)
    assert [(r.meta["scene"], r.split) for r in reader.refs] == [
        (1, "train"), (10, "train"), (100, "train"), (106, "test"),
    ]  # fmt: skip
    for ref, value in zip(reader.refs, (11, 22, 33, 44), strict=True):
        sample = reader.read(ref)
        assert all(np.all(array == value) for array in sample.arrays.values()), ref.sample_id
    assert [r.meta["scene"] for r in SEN12MSCR(tmp_path, "test").refs] == [106]
    assert scene_split(SPRING, 1) == "train" and scene_split(SPRING, 106) == "test"


def test_cr_missing_partner_names_the_file(tmp_path: Path) -> None:
    _cr_patch(tmp_path, 1, patch=5, value=1)
    cloudy = sen12ms_cr.patch_path(tmp_path, SPRING, "s2_cloudy", 1, 5)
    cloudy.unlink()
    with pytest.raises(DataError, match="missing partner") as info:
        SEN12MSCR(tmp_path)
    assert info.value.path == cloudy


# ---------------------------------------------------------------- BigEarthNet


def test_ben_demo_pairs_bands_and_targets(demo: Path) -> None:
    root = demo / "bigearthnet"
    assert [len(BigEarthNet(root, s)) for s in ("train", "val", "test")] == [60, 12, 60]
    reader = BigEarthNet(root, "val")
    sample = reader.read(reader.refs[0])
    s2, sar = sample.arrays["s2"], sample.arrays["sar"]
    assert (s2.dtype, s2.shape, sar.dtype, sar.shape) == (
        np.uint16, (13, 120, 120), np.float32, (2, 120, 120),
    )  # fmt: skip
    b10 = S2_BANDS.index("B10")
    assert not s2[b10].any() and not sample.valid_bands["s2"][b10]
    assert sample.valid_bands["s2"].sum() == 12
    # A 20 m band comes back on the 10 m grid with its values preserved on average.
    b05 = S2_BANDS.index("B05")
    native = reader.refs[0].files["s2"][BEN_S2_BANDS.index("B05")]
    assert read_raster(native).data.shape == (1, 60, 60)
    assert abs(s2[b05].mean() - read_raster(native).data.mean()) < 0.02 * s2[b05].mean()
    assert np.array_equal(sample.meta["target"], targets_from_clc43(sample.meta["labels"]))
    assert sample.meta["target"].dtype == np.uint8 and sample.meta["target"].shape == (19,)


def test_ben_demo_labels_follow_the_pixels(demo: Path) -> None:
    reader = BigEarthNet(demo / "bigearthnet")
    water = CLASS19_NAMES.index("Inland waters")
    nir = S2_BANDS.index("B08")
    samples = [reader.read(ref) for ref in reader.refs]
    dark_nir_share = [
        np.mean(s.arrays["s2"][nir] < 1000) for s in samples if s.meta["target"][water]
    ]
    # Water reflects ~250 in NIR against >2000 on land: a water label means >= 5 % dark pixels.
    assert dark_nir_share and min(dark_nir_share) >= 0.04
    assert len({tuple(s.meta["target"]) for s in samples}) > 5, "labels should vary by patch"


def test_ben_exclude_lists_drop_patches(demo: Path, tmp_path: Path) -> None:
    reader = BigEarthNet(demo / "bigearthnet", "train")
    snowy = tmp_path / "patches_with_seasonal_snow.csv"
    snowy.write_text(f"{reader.refs[0].sample_id}\n{reader.refs[1].sample_id}\n")
    kept = BigEarthNet(demo / "bigearthnet", "train", exclude_lists=[snowy])
    assert len(kept) == len(reader) - 2
    assert reader.refs[0].sample_id not in {r.sample_id for r in kept.refs}


def test_label_mapping_drops_exactly_eleven_clc_classes() -> None:
    assert len(CLC43_NAMES) == 43 and len(CLASS19_NAMES) == 19
    assert set(CLC43_TO_19) == set(CLC43_NAMES)
    dropped = {name for name, merged in CLC43_TO_19.items() if merged is None}
    assert dropped == {
        "Road and rail networks and associated land", "Port areas", "Airports",
        "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
        "Sport and leisure facilities", "Bare rock", "Burnt areas", "Intertidal flats",
    }  # fmt: skip
    assert {m for m in CLC43_TO_19.values() if m is not None} == set(CLASS19_NAMES)
    target = targets_from_clc43(["Rice fields", "Estuaries", "Airports"])
    assert np.flatnonzero(target).tolist() == [2, 18]
    with pytest.raises(DataError, match="unknown CORINE label 'Moon dust'"):
        targets_from_clc43(["Moon dust"], source="x.json")


def test_v2_metadata_targets_and_splits(tmp_path: Path) -> None:
    path = tmp_path / "metadata.parquet"
    frame = pd.DataFrame(
        {
            "patch_id": ["a", "b", "c"],
            "labels": [["Arable land", "Marine waters"], ["Urban fabric"], ["Pastures"]],
            "split": ["train", "validation", "test"],
            "country": ["Austria", "Portugal", "Finland"],
            "s1_name": ["s1a", "s1b", "s1c"],
            "s2v1_name": ["x", "y", "z"],
            "contains_seasonal_snow": [False, True, False],
            "contains_cloud_or_shadow": [False, False, False],
        }
    )
    frame.to_parquet(path)
    table = read_v2_metadata(path)
    assert table["split"].tolist() == ["train", "val", "test"]
    assert np.flatnonzero(table["target"][0]).tolist() == [2, 18]
    assert table["target"][1].dtype == np.uint8 and table["target"][1].shape == (19,)
    assert read_v2_metadata(path, drop_snow_cloud=True)["patch_id"].tolist() == ["a", "c"]
    frame.drop(columns="s1_name").to_parquet(path)
    with pytest.raises(DataError, match=r"missing column\(s\) \['s1_name'\]"):
        read_v2_metadata(path)


# ---------------------------------------------------------------- bad input, one per class


def test_truncated_geotiff_names_the_file(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path)
    s2 = root / SPRING / "s2_1" / f"{SPRING}_s2_1_p30.tif"
    rng = np.random.default_rng(0)
    _tif(s2, rng.integers(0, 10000, (13, 16, 16)).astype(np.uint16))
    s2.write_bytes(s2.read_bytes()[: s2.stat().st_size // 2])
    reader = SEN12MS(root)
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        reader.read(reader.refs[0])
    assert info.value.path == s2


def test_wrong_band_count_names_the_file(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path, s2=np.zeros((12, 16, 16), np.uint16))
    reader = SEN12MS(root)
    with pytest.raises(DataError, match=r"expected 13 band\(s\), found 12") as info:
        reader.read(reader.refs[0])
    assert info.value.path.name == f"{SPRING}_s2_1_p30.tif"


def test_wrong_dtype_names_the_file(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path, s2=np.zeros((13, 16, 16), np.int16))
    reader = SEN12MS(root)
    with pytest.raises(DataError, match="expected dtype uint16, found int16") as info:
        reader.read(reader.refs[0])
    assert info.value.path.name == f"{SPRING}_s2_1_p30.tif"


def test_nonfinite_s2_is_rejected_while_sar_nan_is_kept(tmp_path: Path) -> None:
    bad_s2 = np.full((13, 16, 16), 0.1, np.float32)
    bad_s2[3, 2, 2], bad_s2[4, 5, 5] = np.nan, np.inf
    root = _sen12ms_root(tmp_path, s2=bad_s2)
    reader = SEN12MS(root)
    # S2 reflectance is integer data: a float file with NaN/inf is refused, never repaired.
    with pytest.raises(DataError, match="expected dtype uint16, found float32") as info:
        reader.read(reader.refs[0])
    assert info.value.path.name == f"{SPRING}_s2_1_p30.tif"
    sar = np.full((2, 16, 16), -12.0, np.float32)
    sar[0, :3, :3] = np.nan
    _sen12ms_root(tmp_path)
    _tif(tmp_path / SPRING / "s1_1" / f"{SPRING}_s1_1_p30.tif", sar)
    assert int(np.isnan(reader.read(reader.refs[0]).arrays["sar"]).sum()) == 9


def test_sen12ms_s1_away_from_its_s2_names_both_files(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path)
    s1 = root / SPRING / "s1_1" / f"{SPRING}_s1_1_p30.tif"
    away = from_origin(520000, 5000000, 10, 10)  # 20 km east of TRANSFORM
    write_raster(s1, np.full((2, 16, 16), -10, np.float32), crs="EPSG:32633", transform=away)
    reader = SEN12MS(root)
    with pytest.raises(DataError, match=f"does not overlap its partner {SPRING}_s2_1_p30.tif"):
        reader.read(reader.refs[0])


def test_missing_split_file_names_it(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path)
    split_list_path(root, "test").unlink()
    assert len(SEN12MS(root, "train")) == 1
    with pytest.raises(DataError, match="split list not found") as info:
        SEN12MS(root)
    assert info.value.path == split_list_path(root, "test")
    ben = tmp_path / "ben"
    (ben / "BigEarthNet-v1.0").mkdir(parents=True)
    (ben / "BigEarthNet-S1-v1.0").mkdir()
    with pytest.raises(DataError, match="split CSV not found") as info:
        BigEarthNet(ben, "val")
    assert info.value.path == split_csv_path(ben, "val")


def test_malformed_split_line_names_file_and_line(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path)
    split_list_path(root, "test").write_text(f"{SPRING}_s2_1_p30.tif\n{SPRING}_s1_1_p31.tif\n")
    with pytest.raises(DataError, match=r"line 2: .* is not an S2 patch name") as info:
        SEN12MS(root, "test")
    assert info.value.path == split_list_path(root, "test")


def _ben_with_splits(demo: Path, root: Path, lines: dict[str, list[str]]) -> Path:
    """The demo's BigEarthNet patches (linked) under ``root`` with hand-written split CSVs."""
    root.mkdir()
    for folder in (S2_FOLDER, S1_FOLDER):
        (root / folder).symlink_to(demo / "bigearthnet" / folder, target_is_directory=True)
    for split in ("train", "val", "test"):
        split_csv_path(root, split).parent.mkdir(exist_ok=True)
        split_csv_path(root, split).write_text("".join(f"{line}\n" for line in lines[split]))
    return root


def test_ben_repeated_or_shared_split_lines_are_refused(demo: Path, tmp_path: Path) -> None:
    pairs = split_csv_path(demo / "bigearthnet", "train").read_text().splitlines()
    val = split_csv_path(demo / "bigearthnet", "val").read_text().splitlines()
    repeated = {"train": pairs[:3] + pairs[1:2], "val": val, "test": []}
    root = _ben_with_splits(demo, tmp_path / "repeated", repeated)
    first = pairs[1].split(",")[0]
    with pytest.raises(DataError, match=f"listed more than once, first: {first}") as info:
        BigEarthNet(root)
    assert info.value.path == split_csv_path(root, "train")
    shared = {"train": pairs[:3], "val": val, "test": [pairs[2], pairs[0]]}
    root = _ben_with_splits(demo, tmp_path / "shared", shared)
    with pytest.raises(
        DataError, match=re.escape(f"also listed in {split_csv_path(root, 'train')}")
    ) as info:
        BigEarthNet(root)
    assert info.value.path == split_csv_path(root, "test")
    assert f"first: {pairs[2].split(',')[0]}, {pairs[0].split(',')[0]}" in str(info.value)
    # An S1 patch paired with two S2 patches leaks as much as a repeated S2 patch.
    s1_twice = {"train": pairs[:2], "val": [f"{val[0].split(',')[0]},{pairs[0].split(',')[1]}"],
                "test": []}  # fmt: skip
    root = _ben_with_splits(demo, tmp_path / "s1", s1_twice)
    with pytest.raises(DataError, match=f"first: {pairs[0].split(',')[1]}"):
        BigEarthNet(root)


def test_sen12ms_repeated_or_shared_split_lines_are_refused(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path)
    line = f"{SPRING}_s2_1_p30.tif"
    split_list_path(root, "train").write_text(f"{line}\n{line}\n")
    with pytest.raises(
        DataError, match=rf"1 patch\(es\) listed more than once, first: {SPRING}_1_p30;"
    ):
        SEN12MS(root)
    split_list_path(root, "train").write_text(f"{line}\n")
    split_list_path(root, "test").write_text(f"{line}\n")
    with pytest.raises(DataError, match=r"also listed in .*train_list\.txt") as info:
        SEN12MS(root)
    assert info.value.path == split_list_path(root, "test")


def test_v2_metadata_with_a_repeated_patch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.parquet"
    frame = pd.DataFrame(
        {
            "patch_id": ["a", "b", "a"],
            "labels": [["Pastures"]] * 3,
            "split": ["train", "validation", "test"],
            "s1_name": ["s1a", "s1b", "s1c"],
            "contains_seasonal_snow": [False] * 3,
            "contains_cloud_or_shadow": [False] * 3,
        }
    )
    frame.to_parquet(path)
    with pytest.raises(DataError, match="listed more than once, first: a"):
        read_v2_metadata(path)


def test_empty_folder_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="no samples found; expected files like ROIs1158_spring_s1/s1_1/"
    ):
        SEN12MSCR(tmp_path)
    with pytest.raises(DataError, match=r"folder not found; extract BigEarthNet-S2-v1\.0\.tar\.gz"):
        BigEarthNet(tmp_path)


def test_misnamed_folders_are_named(tmp_path: Path) -> None:
    root = _sen12ms_root(tmp_path / "sen12ms")
    (root / SPRING / "s1_1").rename(root / SPRING / "S1_1")
    with pytest.raises(DataError, match="file named by the split lists not found") as info:
        SEN12MS(root)
    assert info.value.path == root / SPRING / "s1_1" / f"{SPRING}_s1_1_p30.tif"
    cr = tmp_path / "cr"
    _cr_patch(cr, 1, patch=5, value=1)
    (cr / f"{SPRING}_s2_cloudy").rename(cr / f"{SPRING}_S2_cloudy")
    with pytest.raises(DataError, match="unexpected folder name") as info:
        SEN12MSCR(cr)
    assert info.value.path == cr / f"{SPRING}_S2_cloudy"
