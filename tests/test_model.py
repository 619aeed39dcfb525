"""The msGFM model on the demo preset: shapes, MoE placement, masking, losses, reuse."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import Mlp
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerStage,
)
from torch import nn

from msgfm.model.encoder import SwinEncoder
from msgfm.model.factory import (
    build_mask_generator,
    build_model,
    load_encoder,
    resolve_config,
)
from msgfm.model.masking import MaskGenerator, apply_mask_token, pixel_mask
from msgfm.model.moe import MoEMlp
from msgfm.model.moe_gate import expert_capacity
from msgfm.model.msgfm import distill_loss, masked_l1
from msgfm.model.patch_embed import StackedPatchEmbed

DENSE = {"preset": "demo", "moe": {"enabled": False}}
CHANNELS = {"rgb": 3, "s2": 13, "sar": 2, "dsm": 1}


def _masks(batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return build_mask_generator(DENSE).batch(batch_size, generator)


def _images(sensor: str, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, CHANNELS[sensor], 64, 64, generator=generator)


@pytest.fixture(scope="module")
def dense_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(DENSE)


def test_encoder_is_built_from_timm_blocks(dense_model):
    stages = dense_model.encoder.stages
    assert len(stages) == 4
    assert all(isinstance(stage, SwinTransformerStage) for stage in stages)
    assert isinstance(stages[0].downsample, nn.Identity)
    assert all(isinstance(stage.downsample, PatchMerging) for stage in stages[1:])
    assert all(isinstance(b, SwinTransformerBlock) for s in stages for b in s.blocks)
    # shifted windows on odd blocks where the grid is larger than the window (16, 8, 4 tokens)
    assert stages[2].blocks[1].shift_size == (1, 1)
    assert stages[3].blocks[1].shift_size == (0, 0)  # 2×2 grid = one window


@pytest.mark.parametrize("sensor", sorted(CHANNELS))
def test_shapes_per_sensor(dense_model, sensor):
    image = _images(sensor, 2, seed=1)
    with torch.no_grad():
        tokens = dense_model.embed(image, sensor, _masks(2, seed=2))
        final, stages = dense_model.encoder.forward_features(tokens, return_stages=True)
        merged = dense_model.encoder.forward_distill(tokens)
        recon = dense_model.decoders[sensor](final)
    assert tokens.shape == (2, 16, 16, 32)
    assert final.shape == (2, 256, 2, 2)
    assert [tuple(s.shape) for s in stages] == [
        (2, 32, 16, 16),
        (2, 64, 8, 8),
        (2, 128, 4, 4),
        (2, 256, 2, 2),
    ]
    assert merged.shape == (2, 2, 2, 256)
    assert recon.shape == image.shape


def test_moe_replaces_exactly_the_odd_blocks_of_stage_3():
    model = build_model({"preset": "demo", "depths": [2, 2, 4, 2]})
    assert model.encoder.moe_blocks() == [(2, 1), (2, 3)]
    for s, stage in enumerate(model.encoder.stages):
        for b, block in enumerate(stage.blocks):
            expected = MoEMlp if (s, b) in {(2, 1), (2, 3)} else Mlp
            assert type(block.mlp) is expected, (s, b)
    assert model.encoder.stages[2].blocks[1].mlp.num_experts == 4
    every = build_model({"preset": "demo", "moe": {"every_other": False, "stage": 1}})
    assert every.encoder.moe_blocks() == [(1, 0), (1, 1)]


def test_any_block_takes_the_mlp_that_mlp_layer_gives():
    """A dense MLP in place of the MoE is one argument, with no MoE left to route or sum."""

    def wider_in_stage_3(stage: int, block: int, dim: int, hidden: int) -> nn.Module | None:
        return Mlp(dim, 2 * hidden) if stage == 2 else None

    encoder = SwinEncoder(
        img_size=64, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=2,
        mlp_layer=wider_in_stage_3,
    )  # fmt: skip
    widths = [[block.mlp.fc1.out_features for block in stage.blocks] for stage in encoder.stages]
    assert widths == [[64, 64], [128, 128], [512, 512], [512, 512]]
    assert encoder.moe_blocks() == [] and encoder.moe_layers() == []
    assert encoder(torch.randn(2, 16, 16, 16)).shape == (2, 128, 2, 2)
    assert encoder.aux_loss().item() == 0.0


def test_total_loss_adds_weighted_aux_of_the_shared_pass():
    torch.manual_seed(2)
    model = build_model({"preset": "demo", "moe": {"capacity_factor": 1.0}})
    layer = model.encoder.stages[2].blocks[1].mlp
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(m.aux_loss))
    batch = {
        "s2": {"image": _images("s2", 2, 30), "mask": _masks(2, 31)},
        "sar": {"image": _images("sar", 2, 32), "mask": _masks(2, 33)},
    }
    try:
        loss, parts = model(batch)
    finally:
        handle.remove()
    assert len(seen) == 1  # both entries share one trunk pass
    aux = sum(m.aux_loss for m in model.encoder.moe_layers())
    assert seen[0].item() > 0 and parts["aux"].item() == pytest.approx(aux.item())
    expected = parts["l1/s2"] + parts["l1/sar"] + 0.01 * aux
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert layer.gates[0].wg.weight.grad.abs().sum() > 0  # the balancing loss trains the gate


def _heterogeneous_batch() -> dict[str, dict[str, torch.Tensor]]:
    """Three sources of unequal batch sizes, one with a cross-sensor partner."""
    return {
        "rgb": {"image": _images("rgb", 4, 40), "mask": _masks(4, 41)},
        "s2": {
            "image": _images("s2", 2, 42),
            "mask": _masks(2, 43),
            "partner": _images("sar", 2, 44),
            "partner_sensor": "sar",
            "cross": torch.tensor([True, False]),
        },
        "sar": {"image": _images("sar", 3, 45), "mask": _masks(3, 46)},
    }


def test_one_trunk_pass_routes_each_source_as_its_own_pass_would():
    """routing_scope=source: the shared pass equals one pass per source, MoE drops included."""
    torch.manual_seed(3)
    model = build_model({"preset": "demo", "moe": {"capacity_factor": 0.5}}).eval()
    batch = _heterogeneous_batch()
    weights = {"rgb": 1.0, "s2": 0.5, "sar": 0.25}
    loss, parts = model(batch, weights)
    dropped = model.encoder.stages[2].blocks[1].mlp.last_stats["dropped_fraction"]
    assert dropped.item() > 0  # capacity binds, so grouping matters
    loss.backward()
    joint_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    separate_loss, separate_aux = 0.0, 0.0
    for key, entry in batch.items():
        part_loss, part = model({key: entry}, weights)
        part_loss.backward()
        separate_loss += part_loss.item()
        separate_aux += part["aux"].item()
        for name, value in part.items():
            if name not in ("loss", "aux"):
                torch.testing.assert_close(parts[name], value, rtol=1e-5, atol=1e-6)
    assert parts["aux"].item() == pytest.approx(separate_aux, rel=1e-5)
    assert loss.item() == pytest.approx(separate_loss, rel=1e-5)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(joint_grads[name], param.grad, rtol=1e-4, atol=1e-6)


def test_step_routing_scope_routes_all_sources_together():
    torch.manual_seed(3)
    batch = _heterogeneous_batch()
    capacities = {}
    for scope in ("source", "step"):
        model = build_model({"preset": "demo", "moe": {"routing_scope": scope}}).eval()
        model(batch)
        capacities[scope] = model.encoder.stages[2].blocks[1].mlp.last_stats["capacity"]
    # demo stage 3: a 4×4 grid of tokens per sample, 4 experts, capacity factor 1.25
    per_source = [expert_capacity(n * 16, 4, 1, 1.25) for n in (4, 2, 3)]
    assert capacities == {"source": sum(per_source), "step": expert_capacity(9 * 16, 4, 1, 1.25)}


def test_decoding_chosen_tokens_equals_full_decoder(dense_model):
    decoder = dense_model.decoders["s2"]
    features = torch.randn(2, 256, 2, 2)
    with torch.no_grad():
        full = decoder(features)  # (2, 13, 64, 64)
        patch = decoder.forward_tokens(features[1, :, 0, 1].unsqueeze(0))
    torch.testing.assert_close(patch[0], full[1, :, 0:32, 32:64])


def test_mask_generator_ratio_cells_and_determinism():
    generator = MaskGenerator(192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6)
    mask = generator(torch.Generator().manual_seed(5))
    assert mask.shape == (48, 48) and mask.dtype == torch.bool
    assert generator.num_masked == 22  # ⌈36 · 0.6⌉
    assert int(mask.sum()) == 22 * 8 * 8
    cells = mask.view(6, 8, 6, 8)
    assert torch.equal(cells.amax(dim=(1, 3)), cells.amin(dim=(1, 3)))  # whole 8×8 blocks
    again = generator(torch.Generator().manual_seed(5))
    other = generator(torch.Generator().manual_seed(6))
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    demo = build_mask_generator(DENSE)
    assert demo.token_grid == 16 and demo.num_masked == math.ceil(16 * 0.6)


def test_mask_token_replaces_only_masked_tokens():
    tokens = torch.randn(2, 4, 4, 3)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True
    token = torch.tensor([7.0, 8.0, 9.0])
    out = apply_mask_token(tokens, mask, token)
    assert torch.equal(out[mask], token.expand(2, 3))
    assert torch.equal(out[~mask], tokens[~mask])
    with pytest.raises(ValueError, match="token grid"):
        apply_mask_token(tokens, mask[:, :2], token)


def test_mask_is_shared_by_all_channels_of_an_image(dense_model):
    """A hidden patch stays hidden whatever any of its channels holds."""
    mask = _masks(1, seed=3)
    image = _images("s2", 1, seed=4)
    hidden = pixel_mask(mask, 4).bool().expand_as(image)
    changed = image.clone()
    changed[:, 5][hidden[:, 5]] += 10.0  # one band only, hidden pixels only
    with torch.no_grad():
        a = dense_model.embed(image, "s2", mask)
        b = dense_model.embed(changed, "s2", mask)
    assert torch.equal(a, b)
    assert pixel_mask(mask, 4).shape == (1, 1, 64, 64)


def test_band_validity_zeroes_missing_bands(dense_model):
    image = _images("s2", 2, seed=5)
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[:, 10] = False  # BigEarthNet has no B10
    garbage = image.clone()
    garbage[:, 10] = 1e3
    zeroed = image.clone()
    zeroed[:, 10] = 0.0
    with torch.no_grad():
        a = dense_model.embed(garbage, "s2", band_valid=valid)
        b = dense_model.embed(zeroed, "s2")
    torch.testing.assert_close(a, b)


def test_masked_l1_matches_hand_computation():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # pixels (0,0) and (1,1)
    # |1| + |4| + 0 + 0 = 5 over 2 masked pixels and 2 channels
    expected = 5.0 / (2.0 + 1e-5) / 2.0
    assert masked_l1(pred, target, mask).item() == pytest.approx(expected, rel=1e-6)


def test_forward_loss_equals_manual_pipeline(dense_model):
    image, mask = _images("rgb", 2, seed=6), _masks(2, seed=7)
    loss, parts = dense_model({"rgb": {"image": image, "mask": mask}})
    with torch.no_grad():
        features = dense_model.encoder.forward_features(dense_model.embed(image, "rgb", mask))
        pred = dense_model.decoders["rgb"](features)
        hidden = pixel_mask(mask, 4)
        manual = ((pred - image).abs() * hidden).sum() / (hidden.sum() + 1e-5) / 3
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert parts["l1/rgb"].item() == pytest.approx(manual.item(), rel=1e-5)
    assert parts["aux"].item() == 0.0  # dense MLPs: no balancing loss


def test_cross_sensor_uses_partner_decoder_and_input_mask(dense_model, monkeypatch):
    image, partner = _images("s2", 4, seed=8), _images("sar", 4, seed=9)
    mask = _masks(4, seed=10)
    mask[1] = False
    mask[1, :8, :8] = True  # sample 1 hides one 32-px quarter: one of its 4 final tokens
    cross = torch.tensor([False, True, False, True])
    decoded: dict[str, int] = {}

    def spy(name):
        original = dense_model.decoders[name].forward_tokens

        def forward_tokens(tokens):
            decoded[name] = decoded.get(name, 0) + tokens.shape[0]
            return original(tokens)

        return forward_tokens

    for name in ("s2", "sar"):
        monkeypatch.setattr(dense_model.decoders[name], "forward_tokens", spy(name))
    entry = {"image": image, "mask": mask, "partner": partner, "partner_sensor": "sar"}
    loss, parts = dense_model({"s2": {**entry, "cross": cross}})
    # Static shapes: both decoders see all 4 × 2 × 2 final tokens; the flags weigh the loss.
    assert decoded == {"s2": 16, "sar": 16}
    with torch.no_grad():
        features = dense_model.encoder.forward_features(dense_model.embed(image, "s2", mask))
        hidden = pixel_mask(mask, 4)
        own = dense_model.decoders["s2"](features[[0, 2]])
        other = dense_model.decoders["sar"](features[[1, 3]])
        num_self = ((own - image[[0, 2]]).abs() * hidden[[0, 2]]).sum() / 13
        num_cross = ((other - partner[[1, 3]]).abs() * hidden[[1, 3]]).sum() / 2
        expected = (num_self + num_cross) / (hidden.sum() + 1e-5)
        cross_only = num_cross / (hidden[[1, 3]].sum() + 1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["l1/s2/cross"].item() == pytest.approx(cross_only.item(), rel=1e-5)
    assert parts["cross_rate/s2"].item() == 0.5
    all_cross, parts = dense_model({"s2": {**entry, "cross": torch.ones(4, dtype=torch.bool)}})
    assert parts["l1/s2/self"].item() == 0.0  # an empty group: 0 / ε, same names every step
    assert all_cross.item() == pytest.approx(parts["l1/s2/cross"].item())


def test_gradients_reach_every_module_used():
    torch.manual_seed(1)
    model = build_model(DENSE)
    batch = {
        "sen12ms": {
            "sensor": "s2",
            "image": _images("s2", 2, seed=11),
            "mask": _masks(2, seed=12),
            "partner": _images("sar", 2, seed=13),
            "partner_sensor": "sar",
            "cross": torch.tensor([True, False]),
        },
        "geopile": {"sensor": "rgb", "image": _images("rgb", 2, 14), "mask": _masks(2, 15)},
    }
    loss, _ = model(batch)
    loss.backward()
    used = ["embeds.s2", "embeds.rgb", "decoders.s2", "decoders.sar", "decoders.rgb"]
    for name, param in model.named_parameters():
        if name.startswith(("embeds.sar", "embeds.dsm", "decoders.dsm")):
            assert param.grad is None, name
        elif name.startswith(tuple(used)) or name.startswith("encoder") or name == "mask_token":
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_deterministic_given_seeds():
    def run() -> tuple[torch.Tensor, dict]:
        torch.manual_seed(3)
        model = build_model(DENSE)
        loss, _ = model({"dsm": {"image": _images("dsm", 2, 16), "mask": _masks(2, 17)}})
        return loss, model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = run(), run()
    assert loss_a.item() == loss_b.item()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_no_weight_decay_names(dense_model):
    names = dense_model.no_weight_decay()
    assert "mask_token" in names
    assert "encoder.stages.2.blocks.1.attn.relative_position_bias_table" in names
    assert "encoder.norm.weight" in names and "embeds.s2.proj.bias" in names
    assert "encoder.stages.0.blocks.0.attn.qkv.weight" not in names
    assert "decoders.rgb.proj.weight" not in names


def test_distillation_head_and_loss():
    torch.manual_seed(4)
    model = build_model({**DENSE, "distill": {"dim": 8, "alpha": 1.0}})
    teacher = nn.Sequential(nn.Conv2d(3, 8, 8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    image, mask = _images("rgb", 2, 18), _masks(2, 19)
    with torch.no_grad():
        target = teacher(image)  # the unmasked image, as GFM feeds its teacher
    loss, parts = model({"rgb": {"image": image, "mask": mask, "teacher": target}})
    with torch.no_grad():
        merged = model.encoder.forward_distill(model.embed(image, "rgb", mask))
        student = model.distill_head(merged)
    expected = distill_loss(parts["l1/rgb"], student, target, alpha=1.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["cos/rgb"].item() == pytest.approx(
        nn.functional.cosine_similarity(student, target).mean().item(), rel=1e-5
    )
    loss.backward()
    assert model.distill_head.proj.weight.grad.abs().sum() > 0


def test_stacked_patch_embedding_is_mean_of_sensor_stems(dense_model):
    embeds = dense_model.embeds
    single = StackedPatchEmbed(embeds, ["s2"])
    s2, sar = _images("s2", 1, 20), _images("sar", 1, 21)
    with torch.no_grad():
        torch.testing.assert_close(single(s2), embeds["s2"](s2))
        stacked = StackedPatchEmbed(embeds, ["s2", "sar"])
        pre = (embeds["s2"].proj(s2) + embeds["sar"].proj(sar)) / 2
        norm_w = (embeds["s2"].norm.weight + embeds["sar"].norm.weight) / 2
        norm_b = (embeds["s2"].norm.bias + embeds["sar"].norm.bias) / 2
        expected = nn.functional.layer_norm(pre.permute(0, 2, 3, 1), (32,), norm_w, norm_b)
        torch.testing.assert_close(stacked(torch.cat([s2, sar], 1)), expected)


def test_load_encoder_roundtrip(dense_model, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"config": dense_model.config, "model": dense_model.state_dict()}, path)
    backbone = load_encoder(path, sensors=["s2", "sar"], stack=True)
    s2 = _images("s2", 1, 22)
    with torch.no_grad():
        expected = dense_model.encoder.forward_features(dense_model.embeds["s2"](s2))
        torch.testing.assert_close(backbone.forward_features(s2, "s2"), expected)
        stacked = backbone(torch.cat([s2, _images("sar", 1, 23)], 1))
    assert stacked.shape == (1, 256, 2, 2)
    assert sorted(backbone.embeds) == ["s2", "sar"]
    with pytest.raises(KeyError, match="dsm"):
        backbone.forward_features(_images("dsm", 1, 24), "dsm")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"window_size": 3}, "window_size 3 does not divide"),
        ({"mask_patch_size": 24}, "mask_patch_size 24"),
        ({"img_size": 48}, "encoder stride 32"),
        ({"colour": 1}, "unknown model config key 'colour'"),
        ({"moe": {"experts": 2}}, "unknown keys"),
        ({"preset": "swin_huge"}, "swin_huge"),
    ],
)
def test_invalid_configs_are_rejected(override, message):
    with pytest.raises((ValueError, KeyError), match=message):
        resolve_config({**DENSE, **override})


def test_swin_base_preset_matches_timm_swin_b():
    """Built on the meta device: parameter names/shapes and output shapes, no compute."""
    with torch.device("meta"):
        paper = build_model({"preset": "swin_base"})
        ours = build_model({"preset": "swin_base", "moe": {"enabled": False}})
        reference = SwinTransformer(
            img_size=192, in_chans=13, embed_dim=128, depths=(2, 2, 18, 2),
            num_heads=(4, 8, 16, 32), window_size=6, drop_path_rate=0.0,
        )  # fmt: skip
        features = ours.encoder.forward_features(torch.empty(1, 48, 48, 128))
        recon = ours.decoders["s2"](features)
    theirs = {
        k.replace("layers.", "stages.", 1): tuple(v.shape)
        for k, v in reference.named_parameters()
        if not k.startswith(("patch_embed", "head"))
    }
    mine = {k: tuple(v.shape) for k, v in ours.encoder.named_parameters()}
    assert mine == theirs
    assert tuple(ours.embeds["s2"].proj.weight.shape) == (128, 13, 4, 4)
    assert features.shape == (1, 1024, 6, 6) and recon.shape == (1, 13, 192, 192)
    assert paper.encoder.moe_blocks() == [(2, i) for i in range(1, 18, 2)]
    assert paper.config["moe"]["num_experts"] == 8
    assert paper.encoder.stages[2].blocks[1].mlp.num_experts == 8


def test_encoder_resizes_for_finetuning_inputs():
    torch.manual_seed(5)
    backbone_model = build_model(DENSE)
    encoder = backbone_model.encoder
    encoder.set_input_size(128)  # e.g. larger downstream crops: grids 32, 16, 8, 4
    with torch.no_grad():
        out = encoder.forward_features(backbone_model.embeds["rgb"](torch.randn(1, 3, 128, 128)))
    assert out.shape == (1, 256, 4, 4)
    assert encoder.stages[3].blocks[1].shift_size == (1, 1)  # 4×4 grid > window 2: shifted


def test_moe_dispatch_reaches_every_moe_layer():
    """model.moe.dispatch is passed to each MoEMlp; the preset leaves the choice to "auto"."""
    assert resolve_config({"preset": "swin_base"})["moe"]["dispatch"] == "auto"
    model = build_model({"preset": "demo", "moe": {"dispatch": "capacity"}})
    dispatches = {
        model.encoder.stages[s].blocks[b].mlp.dispatch for s, b in model.encoder.moe_blocks()
    }
    assert dispatches == {"capacity"}
    with pytest.raises(ValueError, match="dispatch must be one of"):
        build_model({"preset": "demo", "moe": {"dispatch": "padded"}})
