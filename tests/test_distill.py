"""Table 5 variants: teacher inputs per sensor, distillation and EVA losses, teacher-guided jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from demo_jobs import pretrain_job
from torch import nn

import msgfm.pretrain.loop as loop
from msgfm.data.normalize import normalize
from msgfm.model.factory import (
    build_mask_generator,
    build_model,
    feature_target_scale,
    load_encoder,
    resolve_config,
)
from msgfm.model.masking import pixel_mask
from msgfm.pretrain.loop import run_pretraining
from msgfm.pretrain.teachers import (
    Teacher,
    add_teacher_targets,
    build_teacher,
    render_rgb,
    teacher_for_variant,
)
from msgfm.train import runner
from msgfm.train.preemption import Preempted

# Small random stand-ins of the paper's teachers, at the demo's 64 px.
SWIN = "swin_base_patch4_window7_224.ms_in22k"
SWIN_SMALL = {"img_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1],
              "num_heads": [1, 1, 2, 2], "window_size": 2}  # fmt: skip
CLIP = "vit_base_patch16_clip_224.openai"
CLIP_SMALL = {"img_size": 64, "embed_dim": 32, "depth": 1, "num_heads": 2}
DENSE = {"preset": "demo", "moe": {"enabled": False}}


@pytest.fixture(scope="module")
def clip_teacher() -> Teacher:
    return build_teacher(CLIP, pretrained=False, overrides=CLIP_SMALL)


@pytest.fixture
def shards(pretrain_shards: Path) -> Path:
    return pretrain_shards


def _raw(sensor: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if sensor == "rgb":
        return rng.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    if sensor == "s2":
        return rng.integers(0, 12000, (2, 13, 8, 8)).astype(np.uint16)
    if sensor == "sar":
        return rng.uniform(-30, 2, (2, 2, 8, 8)).astype(np.float32)
    return rng.uniform(400, 480, (2, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("sensor", ["rgb", "s2", "sar", "dsm"])
def test_every_sensor_renders_to_a_three_channel_unit_image(sensor):
    raw = _raw(sensor, seed=1)
    rgb = render_rgb(normalize(sensor, torch.from_numpy(raw)), sensor)
    assert rgb.shape == (2, 3, 8, 8) and rgb.dtype == torch.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert rgb.std() > 0.05  # not collapsed to a constant


def test_renderings_follow_their_documented_definitions():
    rgb = _raw("rgb", 2)
    rendered = render_rgb(normalize("rgb", torch.from_numpy(rgb)), "rgb")
    torch.testing.assert_close(rendered, torch.from_numpy(rgb / 255.0).float(), atol=1e-5, rtol=0)

    s2 = _raw("s2", 3)
    expected = np.clip(np.clip(s2[:, [3, 2, 1]], 0, 10000) / 10000 * 2.5, 0, 1)  # B04 B03 B02
    rendered = render_rgb(normalize("s2", torch.from_numpy(s2)), "s2")
    torch.testing.assert_close(rendered, torch.from_numpy(expected).float(), atol=1e-6, rtol=0)

    sar = np.zeros((1, 2, 2, 2), dtype=np.float32)
    sar[:, 0], sar[:, 1] = -10.0, -20.0  # VV −10 dB, VH −20 dB: a 10 dB ratio
    rendered = render_rgb(normalize("sar", torch.from_numpy(sar)), "sar")
    for channel, value in enumerate([15 / 25, 5 / 25, 10 / 15]):
        torch.testing.assert_close(rendered[:, channel], torch.full((1, 2, 2), value))

    dsm = render_rgb(normalize("dsm", torch.from_numpy(_raw("dsm", 4))), "dsm")
    assert torch.equal(dsm[:, 0], dsm[:, 1]) and torch.equal(dsm[:, 0], dsm[:, 2])
    assert abs(dsm.mean().item() - 0.5) < 0.05  # zero-mean heights sit at mid-grey


def test_rendering_rejects_wrong_channels_and_unknown_sensors():
    with pytest.raises(ValueError, match="s2 image must be"):
        render_rgb(torch.zeros(1, 12, 4, 4), "s2")
    with pytest.raises(KeyError, match="no teacher rendering"):
        render_rgb(torch.zeros(1, 3, 4, 4), "lidar")


def test_teacher_input_is_resized_and_normalised_with_the_teachers_statistics():
    teacher = build_teacher(CLIP, pretrained=False, overrides={**CLIP_SMALL, "img_size": 32})
    assert teacher.input_size == (32, 32)
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # CLIP's, not ImageNet's
    torch.testing.assert_close(teacher.mean.flatten(), clip_mean)
    image = torch.rand(2, 13, 64, 64)
    prepared = teacher.prepare(image, "s2")
    assert prepared.shape == (2, 3, 32, 32)
    undone = prepared * teacher.std + teacher.mean
    expected = F.interpolate(
        render_rgb(image, "s2"), size=(32, 32), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(undone, expected, atol=1e-5, rtol=0)
    swin = build_teacher(SWIN, pretrained=False, overrides=SWIN_SMALL)
    torch.testing.assert_close(swin.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_teacher_is_frozen_seeded_and_leaves_the_global_rng_alone(clip_teacher):
    state = torch.get_rng_state()
    again = build_teacher(CLIP, pretrained=False, overrides=CLIP_SMALL)
    assert torch.equal(torch.get_rng_state(), state)
    other = build_teacher(CLIP, pretrained=False, overrides=CLIP_SMALL, seed=1)
    first = dict(clip_teacher.named_parameters())
    assert all(torch.equal(value, first[name]) for name, value in again.named_parameters())
    assert any(not torch.equal(value, first[name]) for name, value in other.named_parameters())
    assert not any(p.requires_grad for p in clip_teacher.parameters())
    assert not clip_teacher.train().training and not clip_teacher.model.training


def test_teacher_features_pooled_and_on_the_mask_cell_grid(clip_teacher):
    image = torch.rand(2, 3, 64, 64)
    tokens = clip_teacher.model.forward_features(clip_teacher.prepare(image, "rgb"))
    assert tokens.shape == (2, 17, 32)  # class token + 4×4 patches of 16 px
    pooled = clip_teacher.pooled(image, "rgb")
    torch.testing.assert_close(pooled, tokens[:, 0])  # CLIP pools its (final-normed) class token
    cells = clip_teacher.cells(image, "rgb", grid=2)
    patches = tokens[:, 1:].reshape(2, 4, 4, 32)
    manual = patches.reshape(2, 2, 2, 2, 2, 32).mean(dim=(2, 4)).permute(0, 3, 1, 2)
    torch.testing.assert_close(cells, manual)
    swin = build_teacher(SWIN, pretrained=False, overrides=SWIN_SMALL)
    final = swin.model.forward_features(swin.prepare(image, "rgb"))  # NHWC (2, 2, 2, 32)
    torch.testing.assert_close(swin.cells(image, "rgb", grid=2), final.permute(0, 3, 1, 2))
    assert swin.cells(image, "rgb", grid=4).shape == (2, swin.dim, 4, 4)


def _sar_s2_entries(model: nn.Module, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    masks = build_mask_generator(model.config)
    sar, s2 = torch.rand(2, 2, 64, 64, generator=generator), torch.rand(2, 13, 64, 64)
    return {
        "sen12ms/sar": {"image": sar, "sensor": "sar", "mask": masks.batch(2, generator),
                        "partner": s2, "partner_sensor": "s2", "cross": torch.tensor([1, 0])},
        "sen12ms/s2": {"image": s2, "sensor": "s2", "mask": masks.batch(2, generator),
                       "partner": sar, "partner_sensor": "sar", "cross": torch.tensor([0, 0])},
    }  # fmt: skip


def test_distill_loss_is_masked_l1_minus_alpha_cosine(clip_teacher):
    torch.manual_seed(0)
    model = build_model({**DENSE, "distill": {"dim": clip_teacher.dim, "alpha": 0.7}})
    entries = _sar_s2_entries(model, seed=1)
    add_teacher_targets(entries, clip_teacher, "distill", grid=4)
    loss, parts = model(entries)
    expected = 0.0
    with torch.no_grad():
        for key, entry in entries.items():
            tokens = model.embed(entry["image"], entry["sensor"], entry["mask"])
            features = model.encoder.forward_features(tokens)
            hidden = pixel_mask(entry["mask"], 4)
            l1 = 0.0
            for i in range(2):  # per sample: its own decoder, or the partner's when cross
                cross = bool(entry["cross"][i])
                sensor = entry["partner_sensor"] if cross else entry["sensor"]
                target = (entry["partner"] if cross else entry["image"])[i]
                pred = model.decoders[sensor](features[i : i + 1])[0]
                l1 += ((pred - target).abs() * hidden[i]).sum() / target.shape[0]
            l1 = l1 / (hidden.sum() + 1e-5)
            student = model.distill_head.proj(model.encoder.forward_distill(tokens).mean((1, 2)))
            teacher = clip_teacher.pooled(entry["image"], entry["sensor"])
            cos = ((student * teacher).sum(1) / student.norm(dim=1) / teacher.norm(dim=1)).mean()
            assert parts[f"cos/{key}"].item() == pytest.approx(cos.item(), abs=1e-6)
            expected += l1 - 0.7 * cos
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_eva_loss_is_one_minus_cosine_on_masked_cells_only(clip_teacher):
    torch.manual_seed(0)
    model = build_model({**DENSE, "feature_recon": {"dim": clip_teacher.dim}})
    assert model.target == "features" and model.decoders["s2"].stride == 2
    entries = _sar_s2_entries(model, seed=2)
    add_teacher_targets(entries, clip_teacher, "feature_recon", grid=4)
    sar = entries["sen12ms/sar"]
    # The pair's features are computed once and shared: partner cells are the other entry's.
    assert sar["partner_teacher_cells"] is entries["sen12ms/s2"]["teacher_cells"]
    loss, parts = model({"sen12ms/sar": sar})
    with torch.no_grad():
        features = model.encoder.forward_features(model.embed(sar["image"], "sar", sar["mask"]))
        hidden = sar["mask"][:, ::4, ::4].float()  # 16 px cells = 4×4 tokens
        errors = []
        for i, sensor in enumerate(["s2", "sar"]):  # sample 0 is cross, sample 1 is not
            pred = model.decoders[sensor](features[i : i + 1])[0]  # (D, 4, 4)
            target = (sar["partner_teacher_cells"] if i == 0 else sar["teacher_cells"])[i]
            cos = F.cosine_similarity(pred, target, dim=0)
            errors.append((1 - cos)[hidden[i].bool()])
        expected = torch.cat(errors).sum() / (hidden.sum() + 1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["feat/sen12ms/sar"].item() == pytest.approx(expected.item(), rel=1e-5)

    visible = ~sar["mask"][:, ::4, ::4]
    changed = {**sar, "teacher_cells": sar["teacher_cells"].clone()}
    changed["teacher_cells"][1].masked_fill_(visible[1], 5.0)  # a visible cell of a self sample
    assert model({"sen12ms/sar": changed})[0].item() == loss.item()
    changed["teacher_cells"][1].masked_fill_(~visible[1], 5.0)  # a masked one
    assert model({"sen12ms/sar": changed})[0].item() != loss.item()


def test_teacher_gets_no_gradient_from_the_student_loss(clip_teacher):
    model = build_model({**DENSE, "feature_recon": {"dim": clip_teacher.dim}})
    entries = _sar_s2_entries(model, seed=3)
    add_teacher_targets(entries, clip_teacher, "feature_recon", grid=4)
    model(entries)[0].backward()
    assert all(p.grad is None for p in clip_teacher.parameters())
    assert model.decoders["sar"].proj.weight.grad.abs().sum() > 0


def test_feature_targets_geometry_and_variant_checks():
    assert feature_target_scale(resolve_config({"preset": "swin_base"})) == 1  # 6×6 both
    assert feature_target_scale(resolve_config({"preset": "demo"})) == 2
    with pytest.raises(ValueError, match="divide the encoder stride"):
        build_model({**DENSE, "mask_patch_size": 64, "feature_recon": {"dim": 8}})
    with pytest.raises(ValueError, match="needs a teacher"):
        teacher_for_variant({"name": "v", "objective": "distill"}, seed=0)
    with pytest.raises(ValueError, match="objective is mim"):
        teacher_for_variant({"name": "v", "teacher": CLIP}, seed=0)
    with pytest.raises(ValueError, match="objective 'eva'"):
        teacher_for_variant({"name": "v", "objective": "eva", "teacher": CLIP}, seed=0)
    assert teacher_for_variant({"name": "v"}, seed=0) is None


def _variant_config(shards: Path, results: Path, variant: str) -> dict:
    """The demo's Table 5 variant (its small random teacher), two steps per epoch; stop checks
    every step: the preemption test counts them as steps."""
    return pretrain_job(
        shards, results, variant, max_steps_per_epoch=2, checkpoint_every=10, preempt_check_every=1
    )


@pytest.mark.parametrize("variant", ["t5_distill_in22k", "t5_distill_clip", "t5_eva_clip"])
def test_a_teacher_guided_job_trains_and_its_teacher_stays_untouched(
    shards, tmp_path, monkeypatch, variant
):
    config = _variant_config(shards, tmp_path, variant)
    spec = config["variant"]
    objective, teacher, small = spec["objective"], spec["teacher"], spec["teacher_overrides"]
    built: list[Teacher] = []

    def keep(variant, seed):
        built.append(teacher_for_variant(variant, seed))
        return built[-1]

    monkeypatch.setattr(loop, "teacher_for_variant", keep)
    out = tmp_path / "run"
    metrics = run_pretraining(config, out)
    assert metrics["steps"] == 4
    label = "cos" if objective == "distill" else "feat"
    assert {f"{label}/rgb/rgb", f"{label}/sen12ms/s2", f"{label}/mdas/dsm"} <= set(metrics)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert (out / "figures").exists() == (objective == "distill")  # EVA has no pixels to show

    fresh = build_teacher(teacher, pretrained=False, overrides=small, seed=0)
    trained = dict(built[0].named_parameters())
    for name, value in fresh.named_parameters():
        assert trained[name].grad is None and torch.equal(trained[name], value), name
    state = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)
    key = "distill" if objective == "distill" else "feature_recon"
    assert state["config"][key]["dim"] == fresh.dim
    backbone = load_encoder(out / "encoder.pt", ["s2", "sar"], stack=True)
    assert backbone(torch.randn(1, 15, 64, 64)).shape == (1, 256, 2, 2)


def test_a_preempted_distill_job_resumes_to_identical_weights(shards, tmp_path, monkeypatch):
    config = _variant_config(shards, tmp_path, "t5_distill_clip")
    run_pretraining(config, tmp_path / "reference")
    calls = iter(range(100))
    # A SIGTERM seen at the 3rd step: checkpoint there, stop, then resume in a new "attempt".
    monkeypatch.setattr(runner, "broadcast_flag", lambda flag, ctx: next(calls) == 2)
    with pytest.raises(Preempted):
        run_pretraining(config, tmp_path / "resumed")
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "encoder.pt").exists()
    run_pretraining(config, tmp_path / "resumed")
    load = lambda run: torch.load(tmp_path / run / "encoder.pt", weights_only=True)["model"]  # noqa: E731
    expected, resumed = load("reference"), load("resumed")
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(value, resumed[name]), name
