"""The shard format: round trip, atomic finish, and clear errors for damaged sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msgfm.data.shards import ShardSet, ShardWriter, shard_file
from msgfm.errors import DataError


def write_set(root, n=7, rows_per_shard=3, close=True):
    """Row i holds the value i in every role, so misaligned reads show up as wrong values."""
    writer = ShardWriter(root, rows_per_shard, bands={"s2": ["B02", "B03"], "sar": ["VV"]})
    for i in range(n):
        writer.add(
            f"sample{i}",
            {"s2": np.full((2, 4, 5), i, np.uint16), "sar": np.full((1, 4, 5), -i, np.float32)},
            valid_bands={"s2": np.array([True, False])},
            split="train" if i % 2 else "test",
            source="synthetic",
            origin=[f"/data/{i}.tif"],
            label_count=i * 10,
        )
    if close:
        writer.close({"samples": n}, tile=4)
    return writer


def test_round_trip_keeps_rows_aligned_across_shards(tmp_path):
    write_set(tmp_path)
    shards = ShardSet(tmp_path)
    assert len(shards) == 7
    assert sorted(p.name for p in tmp_path.glob("s2-*.npy")) == [
        "s2-00000.npy",
        "s2-00001.npy",
        "s2-00002.npy",
    ]
    for i in range(7):
        sample = shards.get(i)
        assert sample["s2"].dtype == np.uint16 and sample["s2"].shape == (2, 4, 5)
        assert np.all(sample["s2"] == i) and np.all(sample["sar"] == -i)
    assert shards.index["label_count"].tolist() == [i * 10 for i in range(7)]
    assert shards.index["origin"][3].tolist() == ["/data/3.tif"]
    assert list(shards.index.columns[:6]) == [
        "sample_id",
        "shard",
        "row",
        "split",
        "source",
        "origin",
    ]


def test_shards_are_plain_npy_memory_maps(tmp_path):
    write_set(tmp_path)
    array = np.load(shard_file(tmp_path, "s2", 2), mmap_mode="r")
    assert isinstance(array, np.memmap)
    assert array.shape == (1, 2, 4, 5) and int(array[0, 0, 0, 0]) == 6
    assert isinstance(ShardSet(tmp_path).get(0)["sar"], np.memmap)


def test_meta_records_roles_bands_counts_and_report(tmp_path):
    write_set(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["roles"]["s2"] == {"dtype": "uint16", "shape": [2, 4, 5], "bands": ["B02", "B03"]}
    assert meta["roles"]["sar"]["dtype"] == "float32"
    assert meta["valid_bands"] == {"s2": [True, False]}
    assert meta["count"] == 7 and meta["shards"] == 3
    assert meta["splits"] == {"test": 4, "train": 3}
    assert meta["tile"] == 4 and meta["report"] == {"samples": 7}


def test_subset_and_split_select_rows_without_copying(tmp_path):
    write_set(tmp_path)
    train = ShardSet(tmp_path).split("train")
    assert train.index["sample_id"].tolist() == ["sample1", "sample3", "sample5"]
    assert [int(train.get(i)["s2"][0, 0, 0]) for i in range(3)] == [1, 3, 5]
    big = ShardSet(tmp_path).subset(ShardSet(tmp_path).index["label_count"] >= 50)
    assert [int(big.get(i)["sar"][0, 0, 0]) for i in range(len(big))] == [-5, -6]
    with pytest.raises(DataError, match="no samples in split 'val'"):
        ShardSet(tmp_path).split("val")


def test_unfinished_job_leaves_nothing_trusted_and_is_cleaned_next_run(tmp_path):
    writer = write_set(tmp_path, close=False)  # "killed" after 7 adds: 2 shards + 1 temporary
    assert list(tmp_path.glob(".*tmp-*"))
    assert not (tmp_path / "index.parquet").exists()
    with pytest.raises(DataError, match="not a finished shard set"):
        ShardSet(tmp_path)
    writer.abort()
    write_set(tmp_path, n=2, rows_per_shard=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.parquet",
        "meta.json",
        "s2-00000.npy",
        "sar-00000.npy",
    ]
    assert len(ShardSet(tmp_path)) == 2


def test_rewriting_a_finished_set_unfinishes_it_first(tmp_path):
    write_set(tmp_path)
    ShardWriter(tmp_path, 3)
    with pytest.raises(DataError, match="not a finished shard set"):
        ShardSet(tmp_path)


def test_stale_temporaries_from_a_dead_process_are_removed(tmp_path):
    stale = tmp_path / ".s2-00000.npy.tmp-99999"
    stale.write_bytes(b"partial")
    write_set(tmp_path)
    assert not stale.exists()


def test_truncated_shard_is_reported_with_its_path(tmp_path):
    write_set(tmp_path)
    path = shard_file(tmp_path, "s2", 1)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"s2-00001\.npy: truncated"):
        ShardSet(tmp_path)


def test_missing_shard_is_reported(tmp_path):
    write_set(tmp_path)
    shard_file(tmp_path, "sar", 2).unlink()
    with pytest.raises(DataError, match=r"sar-00002\.npy: shard file missing"):
        ShardSet(tmp_path)


def test_shard_with_other_rows_than_indexed_is_rejected(tmp_path):
    write_set(tmp_path)
    np.save(shard_file(tmp_path, "s2", 2), np.zeros((2, 2, 4, 5), np.uint16))
    with pytest.raises(DataError, match=r"index/meta expect uint16\[1, 2, 4, 5\]"):
        ShardSet(tmp_path)


def test_index_and_meta_disagreeing_is_rejected(tmp_path):
    write_set(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["count"] = 8
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"index has 7 rows, meta\.json says 8"):
        ShardSet(tmp_path)


def test_writer_rejects_inconsistent_samples(tmp_path):
    writer = ShardWriter(tmp_path, 4)
    writer.add("a", {"rgb": np.zeros((3, 2, 2), np.uint8)})
    with pytest.raises(DataError, match=r"role 'rgb' is uint16\[3, 2, 2\]"):
        writer.add("b", {"rgb": np.zeros((3, 2, 2), np.uint16)})
    with pytest.raises(DataError, match="roles"):
        writer.add("c", {"dsm": np.zeros((1, 2, 2), np.float32)})
    with pytest.raises(DataError, match="valid_bands"):
        writer.add("d", {"rgb": np.zeros((3, 2, 2), np.uint8)}, valid_bands={"rgb": [1, 1, 0]})
        writer.add("e", {"rgb": np.zeros((3, 2, 2), np.uint8)}, valid_bands={"rgb": [1, 1, 1]})


def test_empty_set_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no samples"):
        ShardWriter(tmp_path, 4).close({})


def test_big_endian_input_is_stored_natively(tmp_path):
    writer = ShardWriter(tmp_path, 4)
    writer.add("a", {"s2": np.arange(4, dtype=">u2").reshape(1, 2, 2)})
    writer.close({})
    assert ShardSet(tmp_path).get(0)["s2"].ravel().tolist() == [0, 1, 2, 3]
