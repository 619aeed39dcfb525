"""Datasets and the multi-source sampler: determinism, distribution, resume, aligned pairs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from msgfm.data.loader import (
    MultiSourceBatchSampler,
    MultiSourceDataset,
    ShardDataset,
    balanced_batch_sizes,
    collate_multisource,
)
from msgfm.data.shards import ShardSet, ShardWriter

WIDTH = 8


def pair_set(root, n, offset=0):
    """SAR + S2 pairs whose pixels encode (row, x): code = 16 * (offset + i) + x.

    S2 stores the code as reflectance, SAR as -code/100 dB, so both can be decoded back and
    compared: a pair that came apart or was flipped alone would disagree.
    """
    writer = ShardWriter(root, rows_per_shard=4)
    for i in range(n):
        code = 16 * (offset + i) + np.arange(WIDTH)
        s2 = np.broadcast_to(code, (2, 3, WIDTH)).astype(np.uint16)
        sar = np.broadcast_to(-code / 100.0, (2, 3, WIDTH)).astype(np.float32)
        writer.add(f"p{i}", {"s2": s2, "sar": sar}, split="train")
    writer.close({})
    return ShardSet(root)


def decode(sample):
    """The codes of a raw (as stored) pair sample."""
    from_s2 = sample["s2"].numpy().astype(int)
    from_sar = np.rint(-sample["sar"].numpy() * 100).astype(int)
    return from_s2, from_sar


def test_balanced_batch_sizes_are_proportional_and_sum_to_total():
    sizes = balanced_batch_sizes({"rgb": 1000, "s1s2": 300, "mdas": 125, "tiny": 2}, 48)
    assert sum(sizes.values()) == 48
    assert sizes == {"rgb": 33, "s1s2": 10, "mdas": 4, "tiny": 1}
    assert balanced_batch_sizes({"a": 1, "b": 1, "c": 1000}, 3) == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="number of sources"):
        balanced_batch_sizes({"a": 5, "b": 5}, 1)


def test_balanced_sources_end_together_and_never_repeat():
    source_sizes = {"rgb": 1000, "s1s2": 300, "mdas": 125}
    batch = balanced_batch_sizes(source_sizes, 48)
    sampler = MultiSourceBatchSampler(source_sizes, batch, seed=1)
    used = Counter()
    for step in sampler:
        counts = Counter(source for source, _, _ in step)
        assert counts == Counter(batch)  # every step has one batch of EVERY source
        used.update(step)
    assert max(used.values()) == 1
    for source, size in source_sizes.items():
        consumed = sum(1 for s, _, _ in used if s == source)
        assert consumed / size > 0.9, source  # nobody is left with a long unused tail


def test_deterministic_given_seed_and_reshuffled_per_epoch():
    args = ({"a": 50, "b": 20}, {"a": 5, "b": 2})
    first = list(MultiSourceBatchSampler(*args, seed=7))
    assert first == list(MultiSourceBatchSampler(*args, seed=7))
    assert first != list(MultiSourceBatchSampler(*args, seed=8))
    sampler = MultiSourceBatchSampler(*args, seed=7)
    sampler.set_epoch(1)
    second = list(sampler)
    assert {epoch for step in second for _, _, epoch in step} == {1}  # the keys carry it
    assert [[key[:2] for key in step] for step in second] != [
        [key[:2] for key in step] for step in first
    ]
    assert len(first) == 10


def test_ranks_are_disjoint_and_form_the_single_process_global_batch():
    sizes, per_rank, world = {"a": 100, "b": 40}, {"a": 4, "b": 2}, 3
    ranks = [
        list(MultiSourceBatchSampler(sizes, per_rank, seed=3, rank=r, world_size=world))
        for r in range(world)
    ]
    single = list(
        MultiSourceBatchSampler(sizes, {s: b * world for s, b in per_rank.items()}, seed=3)
    )
    assert [len(r) for r in ranks] == [len(single)] * world == [6] * world
    for step, global_batch in enumerate(single):
        parts = [set(rank[step]) for rank in ranks]
        assert all(not (p & q) for i, p in enumerate(parts) for q in parts[i + 1 :])
        assert set().union(*parts) == set(global_batch)


def test_resume_at_start_step_yields_the_remaining_batches():
    sampler = MultiSourceBatchSampler({"a": 60, "b": 30}, {"a": 6, "b": 3}, seed=0)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_step=7)
    assert len(sampler) == 3
    assert list(sampler) == full[7:]


def test_sampler_rejects_sources_smaller_than_a_global_batch():
    with pytest.raises(ValueError, match="'b' has 5 samples"):
        MultiSourceBatchSampler({"a": 50, "b": 5}, {"a": 2, "b": 3}, seed=0, world_size=2)
    with pytest.raises(ValueError, match="drop_last=False"):
        MultiSourceBatchSampler({"a": 50}, {"a": 2}, seed=0, world_size=2, drop_last=False)


def test_partial_last_step_without_drop_last():
    sampler = MultiSourceBatchSampler({"a": 10}, {"a": 4}, seed=0, drop_last=False)
    assert [len(b) for b in sampler] == [4, 4, 2]


def test_pairs_stay_aligned_through_flips_and_worker_processes(tmp_path):
    sets = {
        "s1s2": [pair_set(tmp_path / "x", 6), pair_set(tmp_path / "y", 5, offset=6)],
    }
    dataset = MultiSourceDataset(sets, seed=5)
    assert dataset.sizes == {"s1s2": 11}
    sampler = MultiSourceBatchSampler(dataset.sizes, {"s1s2": 2}, seed=5)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_multisource, num_workers=2
    )
    flips, rows_seen = Counter(), []
    for batch_idx, batch in zip(sampler, loader, strict=True):
        assert batch["s1s2"]["s2"].shape == (2, 2, 3, WIDTH)
        assert batch["s1s2"]["s2"].dtype == torch.uint16  # as stored, normalised on the device
        for k, (_, row, _) in enumerate(batch_idx):
            from_s2, from_sar = decode({r: t[k] for r, t in batch["s1s2"].items()})
            assert np.array_equal(from_s2, from_sar)
            assert set(from_s2.ravel() // 16) == {row}
            flips[bool(from_s2[0, 0, 0] % 16 == WIDTH - 1)] += 1
            rows_seen.append(row)
    assert len(rows_seen) == 10
    assert flips[True] > 0 and flips[False] > 0


def test_flips_are_reproducible_per_seed_epoch_and_row(tmp_path):
    dataset = MultiSourceDataset({"s1s2": [pair_set(tmp_path, 8)]}, seed=1)

    def flipped(ds, epoch=0):
        images = [ds[("s1s2", i, epoch)][1]["s2"].int() for i in range(8)]
        return [bool(image[0, 0, 0] > image[0, 0, 1]) for image in images]

    epoch0 = flipped(dataset)
    assert epoch0 == flipped(MultiSourceDataset({"s1s2": [ShardSet(tmp_path)]}, seed=1))
    assert flipped(dataset, epoch=1) != epoch0
    assert not any(flipped(MultiSourceDataset({"s1s2": [ShardSet(tmp_path)]}, flip=False)))


def test_sources_combining_sets_must_share_roles(tmp_path):
    writer = ShardWriter(tmp_path / "rgb", 4)
    writer.add("r", {"rgb": np.zeros((3, 2, 2), np.uint8)})
    writer.close({})
    with pytest.raises(ValueError, match="holds roles"):
        MultiSourceDataset({"mixed": [pair_set(tmp_path / "p", 2), ShardSet(tmp_path / "rgb")]})
    with pytest.raises(IndexError, match="outside source"):
        MultiSourceDataset({"rgb": [ShardSet(tmp_path / "rgb")]})[("rgb", 1, 0)]


def test_shard_dataset_normalises_sensors_and_keeps_labels_raw(tmp_path):
    writer = ShardWriter(tmp_path, 4)
    for value in (0, 255):
        writer.add(
            f"v{value}",
            {
                "rgb": np.full((3, 2, 2), value, np.uint8),
                "label": np.full((1, 2, 2), 5 if value else 255, np.uint8),
                "target": np.array([0, 1, 1], np.uint8),
            },
        )
    writer.close({})
    dataset = ShardDataset(ShardSet(tmp_path), ["rgb", "label", "target"])
    sample = dataset[1]
    assert sample["rgb"].dtype == torch.float32
    assert torch.allclose(sample["rgb"][:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) /
                          torch.tensor([0.229, 0.224, 0.225]))  # fmt: skip
    assert sample["label"].dtype == torch.int64 and dataset[0]["label"].unique().tolist() == [255]
    assert sample["target"].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(KeyError, match="'dsm'"):
        ShardDataset(ShardSet(tmp_path), ["dsm"])
