"""Tilers on the demo datasets (real layouts): shapes, pixel values, pairs, splits, report."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from msgfm.data.demo import write_demo
from msgfm.data.raster import read_raster, write_raster
from msgfm.data.readers.bigearthnet import BEN_S2_BANDS, BigEarthNet
from msgfm.data.readers.mdas import MDAS
from msgfm.data.readers.sen12ms import SEN12MS
from msgfm.data.readers.vaihingen import Vaihingen
from msgfm.data.sensors import SAR_BANDS
from msgfm.data.shards import ShardSet
from msgfm.data.tiling import report as report_module
from msgfm.data.tiling.downstream import tile_downstream
from msgfm.data.tiling.geometry import grid_starts, resize, shorter_side_shape, windows
from msgfm.data.tiling.pretrain import tile_pretrain
from msgfm.errors import DataError


@pytest.fixture(scope="module")
def data_root(demo_root):
    """The session's shared demo datasets (tests/conftest.py); tilers only read them."""
    return demo_root


def test_sen12ms_centre_crops_pairs_and_repairs_nans(data_root, tmp_path):
    report = tile_pretrain("sen12ms", data_root, tmp_path)
    shards = ShardSet(tmp_path)
    refs = SEN12MS(data_root / "sen12ms").refs
    assert len(shards) == len(refs) == report["samples"]
    assert shards.index["sample_id"].tolist() == [r.sample_id for r in refs]
    assert shards.meta["roles"]["s2"]["shape"] == [13, 192, 192]
    assert report["files_read"] == 3 * len(refs)  # s1, s2 and lc of every patch
    expected_nans = 0
    for i, ref in enumerate(refs):
        with rasterio.open(ref.files["sar"][0]) as src:
            sar = src.read(window=Window(32, 32, 192, 192))
        with rasterio.open(ref.files["s2"][0]) as src:
            s2 = src.read(window=Window(32, 32, 192, 192))
        nans = ~np.isfinite(sar)
        expected_nans += int(nans.sum())
        sample = shards.get(i)
        assert np.array_equal(sample["s2"], s2)
        assert np.array_equal(sample["sar"][~nans], sar[~nans])
        assert np.all(sample["sar"][nans] == 0.0)
    assert expected_nans > 0, "the demo should contain SAR no-data to repair"
    assert report["nonfinite_repaired"] == expected_nans
    assert sum(report["nonfinite_by_file"].values()) == expected_nans
    assert all(name.startswith("sen12ms/") for name in report["nonfinite_by_file"])
    assert set(shards.index["split"]) == {"train", "test"}


def test_rerun_writes_identical_shards(data_root, tmp_path):
    tile_pretrain("sen12ms", data_root, tmp_path / "a", rows_per_shard=5)
    tile_pretrain("sen12ms", data_root, tmp_path / "b", rows_per_shard=5)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.npy"))
    assert len(names) > 2
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_mdas_windows_keep_rgb_and_dsm_of_a_tile_together(data_root, tmp_path):
    report = tile_pretrain("mdas", data_root, tmp_path)
    shards = ShardSet(tmp_path)
    reader = MDAS(data_root / "mdas")
    samples = {ref.sample_id: reader.read(ref) for ref in reader.refs}
    expected = sum((s.arrays["rgb"].shape[1] // 384) * (s.arrays["rgb"].shape[2] // 384) * 4
                   for s in samples.values())  # fmt: skip
    assert len(shards) == report["samples"] == expected > 0
    assert shards.meta["mdas_window"] == 384 and shards.meta["mdas_resize"] == 384
    for i, row in shards.index.iterrows():
        source = samples[row["sample_id"].split("_y")[0]]
        y, x = row["window_y"] + row["tile_y"], row["window_x"] + row["tile_x"]
        tile = shards.get(i)
        assert np.array_equal(tile["rgb"], source.arrays["rgb"][:, y : y + 192, x : x + 192])
        assert np.array_equal(tile["dsm"], source.arrays["dsm"][:, y : y + 192, x : x + 192])


def test_mdas_smaller_window_is_resized_to_384(data_root, tmp_path):
    tile_pretrain("mdas", data_root, tmp_path, mdas_window=192)
    shards = ShardSet(tmp_path)
    reader = MDAS(data_root / "mdas")
    source = reader.read(reader.refs[0])
    rows, cols = (n // 192 for n in source.arrays["rgb"].shape[1:])
    assert shards.meta["mdas_window"] == 192
    assert shards.index["sample_id"].str.startswith("sub_area_1_").sum() == rows * cols * 4
    window = resize(source.arrays["dsm"][:, 192:384, 0:192], (384, 384))
    row = shards.index.index[shards.index["sample_id"] == "sub_area_1_y192_x0_t192_192"][0]
    assert np.array_equal(shards.get(row)["dsm"], window[:, 192:, 192:])


@pytest.mark.parametrize("source", ["millionaid", "geopile"])
def test_rgb_collections_resize_shorter_side_then_centre_crop(data_root, tmp_path, source):
    report = tile_pretrain(source, data_root, tmp_path, tile=64)
    shards = ShardSet(tmp_path)
    assert len(shards) == report["samples"] > 0
    assert shards.meta["roles"]["rgb"] == {"dtype": "uint8", "shape": [3, 64, 64],
                                           "bands": ["R", "G", "B"]}  # fmt: skip
    assert shards.index["origin"].map(len).eq(1).all()


def test_bigearthnet_targets_valid_bands_and_splits(data_root, tmp_path):
    tile_downstream("bigearthnet", data_root, tmp_path)
    shards = ShardSet(tmp_path)
    reader = BigEarthNet(data_root / "bigearthnet")
    assert len(shards) == len(reader)
    assert shards.meta["valid_bands"]["s2"][10] is False  # B10 does not exist in BigEarthNet
    assert sum(shards.meta["valid_bands"]["s2"]) == 12
    assert shards.meta["splits"] == {
        split: sum(r.split == split for r in reader.refs) for split in ("train", "val", "test")
    }
    sample = reader.read(reader.refs[-1])
    last = shards.get(len(shards) - 1)
    assert np.array_equal(last["target"], sample.meta["target"])
    assert np.array_equal(last["s2"], sample.arrays["s2"])
    assert shards.meta["roles"]["target"]["shape"] == [19]
    assert last["sar"].shape == (2, 120, 120) and np.isfinite(last["sar"]).all()


def test_sen12ms_cr_keeps_three_aligned_roles_at_256(data_root, tmp_path):
    tile_downstream("sen12ms_cr", data_root, tmp_path)
    shards = ShardSet(tmp_path)
    assert {r: s["shape"] for r, s in shards.meta["roles"].items()} == {
        "sar": [2, 256, 256],
        "s2_cloudy": [13, 256, 256],
        "s2": [13, 256, 256],
    }
    assert set(shards.index["split"]) == {"train", "val", "test"}
    assert not np.array_equal(shards.get(0)["s2"], shards.get(0)["s2_cloudy"])


def test_spacenet2_fixed_sizes(data_root, tmp_path):
    tile_downstream("spacenet2", data_root, tmp_path, mul_size=160)
    shards = ShardSet(tmp_path)
    assert shards.meta["roles"]["mul"]["shape"] == [8, 160, 160]
    assert shards.meta["roles"]["pan"]["shape"] == [1, 650, 650]
    assert shards.meta["roles"]["pansharpened"]["bands"][0] == "coastal"
    with pytest.raises(TypeError, match="unknown option"):
        tile_downstream("spacenet2", data_root, tmp_path, crop=3)


def test_vaihingen_crops_cover_every_pixel_and_stitch_back(data_root, tmp_path):
    tile_downstream("vaihingen", data_root, tmp_path, crop=256, stride=128)
    shards = ShardSet(tmp_path)
    reader = Vaihingen(data_root / "vaihingen")
    ref = reader.refs[0]
    truth = reader.read(ref).arrays["label"]
    rows = shards.index[shards.index["area"] == ref.meta["area"]]
    assert rows["split"].eq(ref.split).all()
    stitched = np.full(truth.shape, 254, dtype=np.uint8)
    for i, row in rows.iterrows():
        assert (row["area_height"], row["area_width"]) == truth.shape[1:]
        stitched[:, row["y"] : row["y"] + 256, row["x"] : row["x"] + 256] = shards.get(i)["label"]
    assert np.array_equal(stitched, truth)
    assert shards.meta["roles"]["rgb"]["bands"] == ["IR", "R", "G"]


def test_unreadable_files_are_skipped_with_reasons_or_fail_the_run(
    data_root, tmp_path, monkeypatch
):
    root = tmp_path / "data"
    write_demo(root, seed=1, datasets=["sen12ms"])
    victim = SEN12MS(root / "sen12ms").refs[2].files["s2"][0]
    victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(DataError, match="1 of 64 sen12ms samples unreadable"):
        tile_pretrain("sen12ms", root, tmp_path / "out")
    assert not (tmp_path / "out" / "index.parquet").exists()
    monkeypatch.setattr(report_module, "MAX_SKIPPED_FRACTION", 0.5)
    report = tile_pretrain("sen12ms", root, tmp_path / "out")
    assert report["samples"] == 63
    assert report["skipped"][0]["file"] == str(victim)
    assert "truncated or corrupt" in report["skipped"][0]["reason"]


def test_tile_larger_than_the_patch_names_the_file(data_root, tmp_path):
    first = SEN12MS(data_root / "sen12ms").refs[0]
    with pytest.raises(DataError, match=r"256x256 px, smaller than the 300x300 tile") as info:
        tile_pretrain("sen12ms", data_root, tmp_path, tile=300)
    assert info.value.path == first.files["sar"][0]
    assert not (tmp_path / "index.parquet").exists()


def test_bigearthnet_band_of_the_wrong_size_skips_its_patch(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_demo(root, seed=1, datasets=["bigearthnet"])
    refs = BigEarthNet(root / "bigearthnet").refs
    b04 = refs[3].files["s2"][BEN_S2_BANDS.index("B04")]  # a 10 m band: 120² expected
    vh = refs[7].files["sar"][SAR_BANDS.index("VH")]
    for path, size in ((b04, 100), (vh, 60)):
        raster = read_raster(path)
        data = raster.data[:, :size, :size]
        write_raster(path, data, crs=raster.crs, transform=raster.transform)
    monkeypatch.setattr(report_module, "MAX_SKIPPED_FRACTION", 0.05)
    tile_downstream("bigearthnet", root, tmp_path / "out")
    shards = ShardSet(tmp_path / "out")
    assert len(shards) == len(refs) - 2
    skipped = {s["sample_id"]: s for s in shards.meta["report"]["skipped"]}
    assert skipped.keys() == {refs[3].sample_id, refs[7].sample_id}
    assert skipped[refs[3].sample_id]["file"] == str(b04)
    assert "expected 120x120 px, found 100x100" in skipped[refs[3].sample_id]["reason"]
    assert skipped[refs[7].sample_id]["file"] == str(vh)
    assert "expected 120x120 px, found 60x60" in skipped[refs[7].sample_id]["reason"]


def test_bigearthnet_s1_away_from_its_s2_is_skipped(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_demo(root, seed=1, datasets=["bigearthnet"])
    refs = BigEarthNet(root / "bigearthnet").refs
    for vv_or_vh in refs[5].files["sar"]:  # georeferenced 30 km east of its S2 partner
        raster = read_raster(vv_or_vh)
        shifted = raster.transform * Affine.translation(3000, 0)
        write_raster(vv_or_vh, raster.data, crs=raster.crs, transform=shifted)
    monkeypatch.setattr(report_module, "MAX_SKIPPED_FRACTION", 0.05)
    report = tile_downstream("bigearthnet", root, tmp_path / "out")
    (skipped,) = report["skipped"]
    assert skipped["sample_id"] == refs[5].sample_id
    assert skipped["file"] == str(refs[5].files["sar"][0])
    assert "does not overlap its partner" in skipped["reason"]
    assert refs[5].files["s2"][BEN_S2_BANDS.index("B02")].name in skipped["reason"]


def test_impossible_sar_values_are_repaired_and_counted_per_file(tmp_path):
    root = tmp_path / "data"
    write_demo(root, seed=1, datasets=["bigearthnet"])
    ref = BigEarthNet(root / "bigearthnet").refs[0]
    vv = ref.files["sar"][SAR_BANDS.index("VV")]
    raster = read_raster(vv)
    data = raster.data.copy()
    data[0, :2, :3] = 3e38  # finite, but no radar echo is 10^37 times the emitted power
    data[0, 5, 5] = -1e6
    write_raster(vv, data, crs=raster.crs, transform=raster.transform)
    report = tile_downstream("bigearthnet", root, tmp_path / "out")
    key = str(vv.relative_to(root))
    assert report["implausible_by_file"] == {key: 7}
    assert report["implausible_repaired"] == 7
    impossible = np.abs(data[0]) > 1e5
    stored = ShardSet(tmp_path / "out").get(0)["sar"][0]
    assert (stored[impossible] == 0).all()  # 0 dB, as NaNs
    kept = ~impossible & np.isfinite(data[0])
    assert np.array_equal(stored[kept], data[0][kept])


def test_window_grid_covers_borders_only_when_asked():
    assert grid_starts(631, 512, 256, cover_border=True) == [0, 119]
    assert grid_starts(631, 512, 256, cover_border=False) == [0]
    assert grid_starts(300, 512, 256, cover_border=True) == [0]
    assert grid_starts(300, 512, 256, cover_border=False) == []
    assert grid_starts(768, 256, 256, cover_border=True) == [0, 256, 512]
    assert windows(400, 300, 200, 200, cover_border=False) == [(0, 0), (200, 0)]


def test_resize_keeps_dtype_and_shorter_side_rule():
    ramp = np.arange(40 * 60, dtype=np.uint16).reshape(1, 40, 60)
    out = resize(ramp, (20, 30))
    assert out.dtype == np.uint16 and out.shape == (1, 20, 30)
    assert abs(int(out[0, 10, 15]) - int(ramp[0, 20, 30])) < 80  # smooth ramp stays a ramp
    assert resize(ramp, (40, 60)) is ramp
    assert shorter_side_shape(300, 600, 192) == (192, 384)
    assert shorter_side_shape(1000, 250, 192) == (768, 192)
