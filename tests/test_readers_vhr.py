"""Readers and demo generators of the very-high-resolution and RGB datasets.

MDAS, Vaihingen, SpaceNet 2, MillionAID and GeoPile: the demos must come out in the real
layouts and read back with the documented shapes; alignment, label decoding and splits must
hold on values, and every kind of broken input must fail with the file and the problem named.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from msgfm.data.demo import mdas as mdas_demo
from msgfm.data.demo import rgb_collections as rgb_demo
from msgfm.data.demo import spacenet2 as spacenet_demo
from msgfm.data.demo import vaihingen as vaihingen_demo
from msgfm.data.raster import write_raster
from msgfm.data.readers.mdas import ARCHIVE_FOLDER, MDAS
from msgfm.data.readers.rgb_collections import GeoPile, MillionAID, load_rgb
from msgfm.data.readers.spacenet2 import MAX_VALUE, SpaceNet2, split_of
from msgfm.data.readers.vaihingen import (
    ALL_AREAS,
    TEST_AREAS,
    TRAIN_AREAS,
    Vaihingen,
    decode_labels,
)
from msgfm.errors import DataError

UTM32 = "EPSG:32632"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    mdas_demo.write(root / "mdas", np.random.default_rng(1))
    vaihingen_demo.write(root / "vaihingen", np.random.default_rng(2))
    spacenet_demo.write(root / "spacenet2", np.random.default_rng(3))
    rgb_demo.write_millionaid(root / "millionaid", np.random.default_rng(4))
    rgb_demo.write_geopile(root / "geopile", np.random.default_rng(5))
    return root


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: int = 25) -> np.ndarray:
    return np.abs(rgb.astype(int) - np.array(colour)[:, None, None]).max(axis=0) < tolerance


# ---------------------------------------------------------------- MDAS


def test_mdas_demo_reads_rgb_and_dsm_on_one_grid(demo_root: Path) -> None:
    reader = MDAS(demo_root / "mdas")
    assert [ref.sample_id for ref in reader.refs] == ["sub_area_1", "sub_area_2", "sub_area_3"]
    # The original's lower-case spelling of sub-area 1's DSM is found.
    assert reader.refs[0].files["dsm"][0].name == "3K_dsm_sub_area1.tif"
    building, road = [], []
    for sample in reader:
        rgb, dsm = sample.arrays["rgb"], sample.arrays["dsm"]
        assert rgb.dtype == np.uint8 and dsm.dtype == np.float32
        # The DSM starts 1.5 m east of the RGB: the first 5 columns of 0.3 m are cropped.
        assert rgb.shape == (3, 640, 763) and dsm.shape == (1, 640, 763)
        x0, _ = mdas_demo.RGB_ORIGINS[sample.meta["sub_area"]]
        assert sample.meta["transform"][2] == pytest.approx(x0 + 1.5)
        assert np.isfinite(dsm).all()
        building.append(dsm[0][_near(rgb, (200, 80, 70))])
        road.append(dsm[0][_near(rgb, (150, 150, 150))])
    # Heights follow the RGB content: roofs stand ~12 m above roads.
    assert np.concatenate(building).mean() - np.concatenate(road).mean() > 6.0


def _write_mdas_pair(
    root: Path,
    number: int = 1,
    *,
    rgb_bands: int = 3,
    dsm: np.ndarray | None = None,
    dsm_origin: tuple[float, float] = (639_998.5, 5_360_031.0),
    dsm_name: str | None = None,
) -> tuple[Path, Path]:
    """An RGB of 100x120 at 0.3 m with a red square and a DSM at 0.5 m with a tower under it.

    The square and the tower both cover map x 640012-640015, y 5360012-5360015.
    """
    folder = root / ARCHIVE_FOLDER / f"sub_area_{number}"
    rgb = np.full((rgb_bands, 100, 120), 90, dtype=np.uint8)
    rgb[:, 50:60, 40:50] = np.array([255, 0, 0, 255][:rgb_bands], dtype=np.uint8)[:, None, None]
    if dsm is None:
        dsm = np.full((1, 70, 80), 480.0, dtype=np.float32)
        dsm[0, 32:38, 27:33] = 510.0
    rgb_path = folder / f"3K_RGB_sub_area{number}.tif"
    dsm_path = folder / (dsm_name or f"3K_DSM_sub_area{number}.tif")
    write_raster(rgb_path, rgb, crs=UTM32, transform=from_origin(640_000, 5_360_030, 0.3, 0.3))
    write_raster(dsm_path, dsm, crs=UTM32, transform=from_origin(*dsm_origin, 0.5, 0.5))
    return rgb_path, dsm_path


def test_mdas_dsm_feature_lands_on_the_rgb_pixel_of_its_map_coordinate(tmp_path: Path) -> None:
    _write_mdas_pair(tmp_path, rgb_bands=4)
    sample = next(iter(MDAS(tmp_path)))
    rgb, dsm = sample.arrays["rgb"], sample.arrays["dsm"][0]
    assert rgb.shape == (3, 100, 120) and dsm.shape == (100, 120)  # alpha dropped, no crop
    red = _near(rgb, (255, 0, 0), 1)
    tall = dsm > 495.0
    red_rows, red_cols = np.nonzero(red)
    tall_rows, tall_cols = np.nonzero(tall)
    assert abs(tall_rows.mean() - red_rows.mean()) < 0.6
    assert abs(tall_cols.mean() - red_cols.mean()) < 0.6
    assert dsm[55, 45] == pytest.approx(510.0)  # the square's centre, x 640013.5
    assert dsm[10, 100] == pytest.approx(480.0)


def test_mdas_rejects_a_dsm_of_another_area(tmp_path: Path) -> None:
    far = _write_mdas_pair(tmp_path / "far", dsm_origin=(650_000.0, 5_360_031.0))[1]
    with pytest.raises(DataError, match=r"covers only 0\.0%") as info:
        next(iter(MDAS(tmp_path / "far")))
    assert info.value.path == far


@pytest.mark.parametrize(
    ("dsm", "problem"),
    [
        (np.full((1, 70, 80), np.nan, dtype=np.float32), "non-finite"),
        (np.full((1, 70, 80), np.inf, dtype=np.float32), "non-finite"),
        (np.full((1, 70, 80), 480, dtype=np.uint16), "expected dtype float32, found uint16"),
        (np.full((2, 70, 80), 480.0, dtype=np.float32), "expected 1 band"),
    ],
)
def test_mdas_bad_dsm_is_named(tmp_path: Path, dsm: np.ndarray, problem: str) -> None:
    _, dsm_path = _write_mdas_pair(tmp_path, dsm=dsm, dsm_name="3K_dsm_sub_area1.tif")
    with pytest.raises(DataError, match=problem) as info:
        next(iter(MDAS(tmp_path)))
    assert info.value.path == dsm_path


def test_mdas_missing_files_and_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"3K_RGB_sub_area1\.tif") as info:
        MDAS(tmp_path)
    assert info.value.path == tmp_path
    rgb_path, dsm_path = _write_mdas_pair(tmp_path, number=2)
    dsm_path.unlink()
    with pytest.raises(DataError, match=r"missing 3K_DSM_sub_area2\.tif") as info:
        MDAS(tmp_path)
    assert info.value.path == rgb_path.parent


# ---------------------------------------------------------------- Vaihingen


def test_vaihingen_split_tables_cover_the_33_areas() -> None:
    assert len(TRAIN_AREAS) == 16 and len(TEST_AREAS) == 17
    assert sorted(TRAIN_AREAS + TEST_AREAS) == sorted(ALL_AREAS)
    assert 9 not in ALL_AREAS and 38 in TEST_AREAS


def test_vaihingen_demo_splits_and_arrays(demo_root: Path) -> None:
    root = demo_root / "vaihingen"
    ids = {
        split: [r.sample_id for r in Vaihingen(root, split).refs]
        for split in ("train", "val", "test")
    }
    assert ids == {"train": ["area1", "area3"], "val": ["area37"], "test": ["area2", "area4"]}
    assert [r.sample_id for r in Vaihingen(root, "train", val_areas=()).refs] == [
        "area1", "area3", "area37",
    ]  # fmt: skip
    eroded = {s.sample_id: s for s in Vaihingen(root)}
    complete = {s.sample_id: s for s in Vaihingen(root, labels="complete")}
    ir_by_class, dsm_by_class = [[] for _ in range(6)], [[] for _ in range(6)]
    for area, sample in eroded.items():
        rgb, dsm, label = (sample.arrays[k] for k in ("rgb", "dsm", "label"))
        assert rgb.dtype == np.uint8 and dsm.dtype == np.float32 and label.dtype == np.uint8
        assert rgb.shape[0] == 3 and dsm.shape[0] == 1 and label.shape[0] == 1
        assert min(rgb.shape[1:]) >= 512 and rgb.shape[1:] == dsm.shape[1:] == label.shape[1:]
        assert sample.meta["bands"] == ("IR", "R", "G")
        assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, 255}
        full = complete[area].arrays["label"]
        assert 255 in label and 255 not in full
        kept = label != 255
        np.testing.assert_array_equal(label[kept], full[kept])
        for c in range(6):
            ir_by_class[c].append(rgb[0][full[0] == c])
            dsm_by_class[c].append(dsm[0][full[0] == c])
    ir = [np.concatenate(v).mean() for v in ir_by_class]
    height = [np.concatenate(v).mean() for v in dsm_by_class]
    assert np.concatenate(dsm_by_class[4]).size > 0  # cars were painted
    assert height[1] - height[0] > 8.0 and height[3] - height[2] > 10.0  # roofs, trees stand
    assert ir[3] > ir[0] + 30  # vegetation is bright in the infrared


def _write_vaihingen_area(root: Path, area: int = 1, *, top: np.ndarray | None = None) -> dict:
    transform = from_origin(496_000, 5_420_000, 0.09, 0.09)
    label = np.zeros((3, 8, 8), dtype=np.uint8)
    label[2] = 255  # blue: building
    paths = {
        "top": root / "top" / f"top_mosaic_09cm_area{area}.tif",
        "dsm": root / "dsm" / f"dsm_09cm_matching_area{area}.tif",
        "label": root / "gts_eroded" / f"top_mosaic_09cm_area{area}_noBoundary.tif",
    }
    top = np.zeros((3, 8, 8), dtype=np.uint8) if top is None else top
    write_raster(paths["top"], top, crs=UTM32, transform=transform)
    dsm = np.full((1, 8, 8), 265.0, dtype=np.float32)
    write_raster(paths["dsm"], dsm, crs=UTM32, transform=transform)
    write_raster(paths["label"], label, crs=UTM32, transform=transform)
    return paths


def test_vaihingen_unknown_label_colour_is_named(tmp_path: Path) -> None:
    colours = np.zeros((3, 4, 4), dtype=np.uint8)
    colours[:, 1, 1] = (12, 34, 56)
    with pytest.raises(DataError, match=r"unknown label colour \(12, 34, 56\) in 1 pixel") as info:
        decode_labels(colours, tmp_path / "gt.tif")
    assert info.value.path == tmp_path / "gt.tif"
    # Through the reader: a recompressed label file shows up the same way.
    paths = _write_vaihingen_area(tmp_path)
    bad = np.zeros((3, 8, 8), dtype=np.uint8)
    bad[0] = 254
    write_raster(paths["label"], bad, crs=UTM32, transform=from_origin(0, 8, 1, 1))
    with pytest.raises(DataError, match=r"\(254, 0, 0\)") as info:
        next(iter(Vaihingen(tmp_path)))
    assert info.value.path == paths["label"]


def test_vaihingen_decodes_every_colour() -> None:
    colours = np.array(
        [[255, 0, 0, 0, 255, 255, 0], [255, 0, 255, 255, 255, 0, 0], [255, 255, 255, 0, 0, 0, 0]],
        dtype=np.uint8,
    )[:, None, :]
    np.testing.assert_array_equal(decode_labels(colours, Path("x"))[0, 0], [0, 1, 2, 3, 4, 5, 255])


def test_vaihingen_truncated_and_wrong_band_count_top_are_named(tmp_path: Path) -> None:
    paths = _write_vaihingen_area(tmp_path, top=np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="expected 3 band") as info:
        next(iter(Vaihingen(tmp_path)))
    assert info.value.path == paths["top"]
    paths = _write_vaihingen_area(tmp_path, top=np.full((3, 8, 8), 7, dtype=np.uint8))
    content = paths["top"].read_bytes()
    paths["top"].write_bytes(content[: len(content) // 3])
    with pytest.raises(DataError, match="not a readable raster") as info:
        next(iter(Vaihingen(tmp_path)))
    assert info.value.path == paths["top"]


def test_vaihingen_missing_and_misnamed_inputs_are_named(tmp_path: Path) -> None:
    paths = _write_vaihingen_area(tmp_path, area=5)
    sample = next(iter(Vaihingen(tmp_path, "train")))
    assert (sample.arrays["label"] == 1).all()  # blue decodes to building
    write_raster(paths["dsm"], np.full((1, 8, 8), np.inf, np.float32), crs=UTM32,
                 transform=from_origin(0, 8, 1, 1))  # fmt: skip
    with pytest.raises(DataError, match="non-finite") as info:
        next(iter(Vaihingen(tmp_path)))
    assert info.value.path == paths["dsm"]
    with pytest.raises(DataError, match="missing") as info:
        Vaihingen(tmp_path, labels="complete")
    assert info.value.path == tmp_path / "gts_complete" / "top_mosaic_09cm_area5.tif"
    paths["top"].parent.rename(tmp_path / "tops")  # misnamed folder
    with pytest.raises(DataError, match=r"top/top_mosaic_09cm_area1\.tif") as info:
        Vaihingen(tmp_path)
    assert info.value.path == tmp_path


# ---------------------------------------------------------------- SpaceNet 2


def test_spacenet2_demo_products_and_splits(demo_root: Path) -> None:
    root = demo_root / "spacenet2"
    reader = SpaceNet2(root)
    assert len(reader) == 6
    assert {ref.meta["aoi"] for ref in reader.refs} == {"AOI_2_Vegas", "AOI_3_Paris"}
    for split in ("train", "val", "test"):
        refs = SpaceNet2(root, split).refs
        assert refs and all(split_of(r.sample_id.split("/")[1]) == split for r in refs)
    for sample in reader:
        pan, mul, sharp = (sample.arrays[k] for k in ("pan", "mul", "pansharpened"))
        assert pan.shape == (1, 650, 650) and mul.shape == (8, 162, 162)
        assert sharp.shape == (8, 650, 650)
        assert pan.dtype == mul.dtype == sharp.dtype == np.uint16
        assert max(pan.max(), mul.max(), sharp.max()) <= MAX_VALUE
        # MUL is the 4x4 block mean of the pan-sharpened image (plus ~2 DN noise).
        blocks = sharp[:, :648, :648].astype(float).reshape(8, 162, 4, 162, 4).mean(axis=(2, 4))
        assert np.abs(blocks - mul).mean() < 4.0
        assert sample.meta["bands"][0] == "coastal" and len(sample.meta["bands"]) == 8


def test_spacenet2_split_shares_are_70_10_20() -> None:
    splits = [split_of(f"AOI_2_Vegas_img{n}") for n in range(1, 20001)]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.01)
    assert split_of("AOI_2_Vegas_img1") == split_of("AOI_2_Vegas_img1")


def _write_spacenet_image(root: Path, pan_dtype: str = "uint16") -> dict[str, Path]:
    folder = root / "AOI_2_Vegas_Train"
    paths = {}
    for product, bands, size in (("PAN", 1, 16), ("MUL", 8, 4), ("MUL-PanSharpen", 8, 16)):
        dtype = pan_dtype if product == "PAN" else "uint16"
        paths[product] = folder / product / f"{product}_AOI_2_Vegas_img7.tif"
        write_raster(paths[product], np.ones((bands, size, size), dtype=dtype), crs="EPSG:4326",
                     transform=from_origin(-115.3, 36.2, 1e-5, 1e-5))  # fmt: skip
    return paths


def test_spacenet2_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"PAN_AOI_2_Vegas_img1\.tif") as info:
        SpaceNet2(tmp_path)
    assert info.value.path == tmp_path
    paths = _write_spacenet_image(tmp_path / "dtype", pan_dtype="float32")
    with pytest.raises(DataError, match="expected dtype uint16, found float32") as info:
        next(iter(SpaceNet2(tmp_path / "dtype")))
    assert info.value.path == paths["PAN"]
    paths = _write_spacenet_image(tmp_path / "partner")
    paths["MUL"].unlink()
    with pytest.raises(DataError, match="no MUL image") as info:
        SpaceNet2(tmp_path / "partner")
    assert info.value.path == paths["MUL"]


# ---------------------------------------------------------------- MillionAID, GeoPile


def test_millionaid_demo_tree_and_images(demo_root: Path) -> None:
    root = demo_root / "millionaid"
    reader = MillionAID(root)
    assert len(MillionAID(root, "train")) == 20 and len(MillionAID(root, "test")) == 8
    classes = {ref.meta["class"] for ref in reader.refs if ref.split == "train"}
    assert classes == {"dry_field", "forest", "runway", "lake"}
    lake = next(ref for ref in reader.refs if ref.meta["class"] == "lake")
    assert lake.meta["labels"] == ("water_area", "lake")
    sizes = set()
    for sample in reader:
        rgb = sample.arrays["rgb"]
        assert rgb.dtype == np.uint8 and rgb.shape[0] == 3
        assert min(rgb.shape[1:]) >= 200 and max(rgb.shape[1:]) <= 300
        sizes.add(rgb.shape)
    assert len(sizes) > 10


def test_millionaid_test_folder_is_read_recursively_and_a_small_share_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    for relative in ("train/water_area/lake/lake_00001.jpg", "test/P0000001.jpg",
                     "test/water_area/lake/P0000002.jpg", "test/a/b/c/P0000003.jpg"):  # fmt: skip
        rgb_demo._write_jpeg(tmp_path / relative, rng.integers(0, 255, (3, 8, 8), np.uint8))
    with caplog.at_level(logging.WARNING, logger="msgfm.data.readers.rgb_collections"):
        reader = MillionAID(tmp_path, "test")
    assert [ref.sample_id for ref in reader.refs] == [
        "test/P0000001.jpg", "test/a/b/c/P0000003.jpg", "test/water_area/lake/P0000002.jpg",
    ]  # fmt: skip
    assert f"3 images under {tmp_path / 'test'}, 0.0003 % of the 990,848" in caplog.text


def test_geopile_demo_datasets_and_naip_tiff(demo_root: Path) -> None:
    reader = GeoPile(demo_root / "geopile")
    datasets = {ref.meta["dataset"] for ref in reader.refs}
    assert datasets == {"NAIP", "RSD46-WHU", "MLRSNet", "RESISC45", "PatternNet"}
    naip = next(ref for ref in reader.refs if ref.meta["dataset"] == "NAIP")
    rgb = reader.read(naip).arrays["rgb"]
    with rasterio.open(naip.files["rgb"][0]) as src:
        assert src.count == 4
        np.testing.assert_array_equal(rgb, src.read()[:3])


def test_grayscale_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_rgb(tmp_path / "gray.png")
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.stack([gray] * 3))
    out = load_rgb(tmp_path / "rgba.png")
    assert out.shape == (3, 8, 8) and (out[0] == 200).all() and (out[1:] == 0).all()


def test_truncated_jpeg_and_empty_collections_are_named(tmp_path: Path) -> None:
    path = tmp_path / "GeoPileV0" / "RESISC45" / "forest" / "forest_001.jpg"
    path.parent.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:1500])
    reader = GeoPile(tmp_path)
    with pytest.raises(DataError, match="truncated") as info:
        reader.read(reader.refs[0])
    assert info.value.path == path
    with pytest.raises(DataError, match=r"train/<level-1>") as info:
        MillionAID(tmp_path)
    assert info.value.path == tmp_path
    path.unlink()
    with pytest.raises(DataError, match="GeoPileV0/<dataset>") as info:
        GeoPile(tmp_path)
    assert info.value.path == tmp_path
