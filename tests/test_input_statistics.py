"""Per-band input statistics: measured from shards, stored in the stems, used for inputs and
MIM targets alike, carried into finetuning (or measured there for stems without their own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from msgfm.data.loader import to_tensor
from msgfm.data.shards import ShardSet, ShardWriter
from msgfm.data.statistics import role_statistics, spaced_rows
from msgfm.finetune.model import build_finetune_model
from msgfm.model.factory import build_mask_generator, build_model, load_encoder
from msgfm.model.patch_embed import SensorPatchEmbed, StackedPatchEmbed
from msgfm.pretrain.reconstruct import reconstruct

SMALL = {"preset": "demo", "sensors": {"s2": 13, "sar": 2}, "moe": {"enabled": False}}


def s2_set(root: Path, n: int, rng: np.random.Generator, b10_valid: bool = True) -> ShardSet:
    writer = ShardWriter(root, rows_per_shard=3)
    valid = np.ones(13, dtype=bool)
    valid[10] = b10_valid
    for i in range(n):
        s2 = rng.integers(0, 4000, size=(13, 4, 5)).astype(np.uint16)
        s2[10] = s2[10] if b10_valid else 0
        writer.add(f"p{i}", {"s2": s2}, valid_bands={"s2": valid}, split="train")
    writer.close({})
    return ShardSet(root)


def test_spaced_rows_cover_the_set_evenly_and_take_all_of_a_small_one():
    assert spaced_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = spaced_rows(1000, 4)
    assert rows.tolist() == [0, 333, 666, 999]


def test_role_statistics_match_numpy_and_skip_bands_a_set_lacks(tmp_path):
    rng = np.random.default_rng(0)
    full = s2_set(tmp_path / "a", 7, rng)
    no_b10 = s2_set(tmp_path / "b", 4, rng, b10_valid=False)
    mean, std = role_statistics([full, no_b10], "s2", to_tensor)

    def pixels(shardset: ShardSet) -> np.ndarray:
        rows = [
            to_tensor("s2", shardset.get(i, ["s2"])["s2"]).numpy() for i in range(len(shardset))
        ]
        return np.concatenate([r.reshape(13, -1) for r in rows], axis=1)

    both = np.concatenate([pixels(full), pixels(no_b10)], axis=1).astype(np.float64)
    expected_mean, expected_std = both.mean(1), both.std(1)
    only_full = pixels(full).astype(np.float64)[10]  # B10: the set that has it, alone
    expected_mean[10], expected_std[10] = only_full.mean(), only_full.std()
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(std.numpy(), expected_std, rtol=1e-5, atol=1e-7)


def test_a_stem_standardises_its_input_and_zeroes_missing_bands_at_their_mean():
    torch.manual_seed(0)
    stem = SensorPatchEmbed(3, 8, 4)
    plain = SensorPatchEmbed(3, 8, 4)
    plain.load_state_dict(stem.state_dict())
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.05, 0.5, 0.0])  # a flat band
    stem.set_input_statistics(mean, std)
    assert stem.input_std.tolist() == pytest.approx([0.05, 0.5, 1.0])  # no spread: std 1
    image = torch.rand(2, 3, 8, 8)
    standard = (image - mean[:, None, None]) / torch.tensor([0.05, 0.5, 1.0])[:, None, None]
    torch.testing.assert_close(stem(image), plain(standard))
    torch.testing.assert_close(stem.unstandardize(stem.standardize(image)), image)
    valid = torch.tensor([[True, False, True]] * 2)
    expected = standard.clone()
    expected[:, 1] = 0.0  # the missing band sits at its mean
    torch.testing.assert_close(stem(image, valid), plain(expected))
    with pytest.raises(ValueError, match="3 values"):
        stem.set_input_statistics(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="finite"):
        stem.set_input_statistics(torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3))


def test_the_stacked_stem_keeps_each_sensors_statistics():
    torch.manual_seed(0)
    s2, sar = SensorPatchEmbed(13, 8, 4), SensorPatchEmbed(2, 8, 4)
    s2.set_input_statistics(torch.rand(13), torch.rand(13) + 0.1)
    sar.set_input_statistics(torch.rand(2), torch.rand(2) + 0.1)
    single = StackedPatchEmbed({"s2": s2}, ["s2"])
    image = torch.rand(2, 13, 8, 8)
    torch.testing.assert_close(single(image), s2(image))
    stacked = StackedPatchEmbed({"s2": s2, "sar": sar}, ["s2", "sar"])
    assert torch.equal(stacked.input_mean, torch.cat([s2.input_mean, sar.input_mean]))
    assert torch.equal(stacked.input_std, torch.cat([s2.input_std, sar.input_std]))


def test_mim_targets_are_standardised_like_the_inputs():
    """With statistics (m, s), the model on x is exactly the identity model on (x − m) / s:
    the same loss, and reconstructions come back in the data's units."""
    torch.manual_seed(0)
    model = build_model(SMALL)
    identity = build_model(SMALL)
    identity.load_state_dict(model.state_dict())
    mean, std = torch.rand(13) * 0.3, torch.rand(13) * 0.1 + 0.01
    model.embeds["s2"].set_input_statistics(mean, std)
    image = torch.rand(3, 13, 64, 64) * 0.3
    standard = (image - mean[:, None, None]) / std[:, None, None]
    mask = build_mask_generator(SMALL).batch(3, torch.Generator().manual_seed(0))
    loss, _ = model({"s2": {"image": image, "mask": mask, "sensor": "s2"}})
    expected, _ = identity({"s2": {"image": standard, "mask": mask, "sensor": "s2"}})
    torch.testing.assert_close(loss, expected)
    model.eval()
    identity.eval()
    back = reconstruct(model, image, "s2", "s2", mask)
    in_units = reconstruct(identity, standard, "s2", "s2", mask) * std[:, None, None]
    torch.testing.assert_close(back, in_units + mean[:, None, None], rtol=1e-4, atol=1e-5)


def test_finetuning_keeps_pretrained_statistics_and_measures_the_others(tmp_path):
    torch.manual_seed(0)
    pretrained = build_model(SMALL)
    pretrained.embeds["s2"].set_input_statistics(torch.full((13,), 0.2), torch.full((13,), 0.05))
    pretrained.embeds["sar"].set_input_statistics(torch.full((2,), 0.5), torch.full((2,), 0.2))
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"config": pretrained.config, "model": pretrained.state_dict()}, checkpoint)
    assert torch.equal(load_encoder(checkpoint).embeds["s2"].input_mean, torch.full((13,), 0.2))
    task_stats = {
        "s2": (torch.full((13,), 0.1), torch.full((13,), 0.3)),
        "sar": (torch.full((2,), 0.4), torch.full((2,), 0.1)),
    }
    kept = build_finetune_model(
        "bigearthnet", weights="msgfm", checkpoint=checkpoint, model_cfg=SMALL, img_size=64,
        input_statistics=task_stats,
    )  # fmt: skip
    stacked = kept.backbone.stacked
    assert torch.equal(
        stacked.input_mean, torch.cat([torch.full((13,), 0.2), torch.full((2,), 0.5)])
    )
    fresh = build_finetune_model(
        "bigearthnet", weights="random", model_cfg=SMALL, img_size=64, input_statistics=task_stats
    )
    assert torch.equal(fresh.backbone.stacked.input_std[:13], torch.full((13,), 0.3))
    assert torch.equal(fresh.backbone.stacked.input_mean[13:], torch.full((2,), 0.4))


@pytest.mark.parametrize("transfer", ["stacked", "shared"])
def test_a_band_the_dataset_lacks_never_reaches_the_encoder(transfer):
    """BigEarthNet has no B10: whatever its zero-fill holds, the prediction is the same."""
    torch.manual_seed(0)
    valid = [True] * 13
    valid[10] = False
    model = build_finetune_model(
        "bigearthnet", weights="random", transfer=transfer, model_cfg=SMALL, img_size=64,
        band_valid={"s2": valid, "sar": [True, True]},
    ).eval()  # fmt: skip
    inputs = {"s2": torch.rand(2, 13, 64, 64), "sar": torch.rand(2, 2, 64, 64)}
    other = {"s2": inputs["s2"].clone(), "sar": inputs["sar"]}
    other["s2"][:, 10] = 5.0
    torch.testing.assert_close(model(inputs), model(other))
    changed = {"s2": inputs["s2"].clone(), "sar": inputs["sar"]}
    changed["s2"][:, 3].add_(0.5)
    assert not torch.allclose(model(inputs), model(changed))
