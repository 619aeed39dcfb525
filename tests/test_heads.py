"""Task heads' output shapes, the finetuning model per task and transfer, and layer decay."""

from __future__ import annotations

import pytest
import torch

from msgfm.finetune.heads import ClassificationHead, RegressionDecoder, UperNetHead
from msgfm.finetune.model import build_finetune_model, layer_decay_groups, layer_ids
from msgfm.train.optim import build_optimizer, build_scheduler

SMALL = {"preset": "demo", "embed_dim": 16, "num_heads": [1, 1, 2, 2]}
DIMS = [16, 32, 64, 128]


def _stages(batch: int, side: int) -> list[torch.Tensor]:
    return [torch.randn(batch, d, side // 4 // 2**i, side // 4 // 2**i) for i, d in enumerate(DIMS)]


def test_classification_head_pools_and_classifies() -> None:
    head = ClassificationHead(256, 19)
    assert head(torch.randn(3, 256, 2, 2)).shape == (3, 19)
    features = torch.randn(1, 256, 2, 2)
    assert torch.allclose(head(features), head(features.mean((2, 3), keepdim=True)))


def test_classification_head_starts_at_the_label_prior() -> None:
    head = ClassificationHead(8, 3)
    head.init_bias_to_prior(torch.tensor([0, 5, 10]), total=10)
    # Smoothed frequencies (k + 0.5) / (n + 1): an absent class starts low, not at -inf.
    expected = torch.tensor([0.5, 5.5, 10.5]) / 11
    zero = torch.zeros(2, 8, 1, 1)
    assert torch.allclose(torch.sigmoid(head(zero)), expected.expand(2, 3), atol=1e-6)
    with pytest.raises(ValueError, match="3-class head"):
        head.init_bias_to_prior(torch.tensor([1, 2]), total=10)


def test_regression_decoder_starts_at_the_band_means_through_the_sigmoid() -> None:
    decoder = RegressionDecoder(DIMS, 3, channels=32)
    decoder.init_bias_to_mean(torch.tensor([0.0, 0.15, 0.3]))
    zero = [torch.zeros_like(f) for f in _stages(1, 64)]
    # a band that is always 0 (cirrus) starts at 1e-3: a finite logit
    expected = torch.tensor([1e-3, 0.15, 0.3])
    assert torch.allclose(torch.sigmoid(decoder(zero)).mean((0, 2, 3)), expected, atol=1e-3)
    with pytest.raises(ValueError, match="3-band decoder"):
        decoder.init_bias_to_mean(torch.tensor([0.1, 0.2]))


def test_regression_decoder_sizes_and_guide() -> None:
    features = _stages(2, 64)
    assert RegressionDecoder(DIMS, 13, channels=32)(features).shape == (2, 13, 64, 64)
    sharpen = RegressionDecoder(DIMS, 8, out_scale=4, channels=32, guide_chans=1)
    guide = torch.rand(2, 1, 250, 250)
    assert sharpen(features, (250, 250), guide).shape == (2, 8, 250, 250)
    with pytest.raises(ValueError, match="guide image with 1 ch"):
        sharpen(features, (250, 250))
    with pytest.raises(ValueError, match="power-of-two"):
        RegressionDecoder(DIMS, 8, out_scale=3)
    with pytest.raises(ValueError, match="channels"):
        RegressionDecoder(DIMS, 8)(features[::-1])


def test_regression_decoder_guide_changes_the_output() -> None:
    torch.manual_seed(0)
    decoder = RegressionDecoder(DIMS, 8, channels=32, guide_chans=1).eval()
    features = _stages(1, 64)
    a = decoder(features, guide=torch.zeros(1, 1, 64, 64))
    b = decoder(features, guide=torch.ones(1, 1, 64, 64))
    assert not torch.allclose(a, b)


def test_upernet_head_full_resolution_logits_batch_of_one() -> None:
    head = UperNetHead(DIMS, 6, channels=32)
    assert head(_stages(2, 128)).shape == (2, 6, 32, 32)  # stride 4 without out_size
    head.train()  # GroupNorm: a batch of one works in training mode too
    assert head(_stages(1, 128), (128, 128)).shape == (1, 6, 128, 128)


INPUTS = {
    "bigearthnet": ({"s2": (13, 120), "sar": (2, 120)}, (19,)),
    "sen12ms_cr": ({"sar": (2, 64), "s2_cloudy": (13, 64)}, (13, 64, 64)),
    "spacenet2": ({"mul": (8, 40), "pan": (1, 160)}, (8, 160, 160)),
    "vaihingen": ({"rgb": (3, 96), "dsm": (1, 96)}, (6, 96, 96)),
}


@pytest.mark.parametrize("transfer", ["stacked", "shared"])
@pytest.mark.parametrize("task", sorted(INPUTS))
def test_finetune_model_outputs(task: str, transfer: str) -> None:
    shapes, out_shape = INPUTS[task]
    native = max(side for _, side in shapes.values() if side <= 128)
    model = build_finetune_model(
        task, weights="random", transfer=transfer, model_cfg=SMALL, native_size=native,
        head_channels=32,
    )  # fmt: skip
    inputs = {role: torch.rand(2, c, side, side) for role, (c, side) in shapes.items()}
    out = model(inputs)
    assert out.shape == (2, *out_shape)
    if task in {"sen12ms_cr", "spacenet2"}:
        assert out.min() >= 0 and out.max() <= 1
    out.float().mean().backward()
    assert model.aux_loss().ndim == 0


def test_finetune_model_accepts_sensor_keys_and_reports_missing_ones() -> None:
    model = build_finetune_model(
        "sen12ms_cr", weights="random", sensors=["sar", "s2"], model_cfg=SMALL, img_size=64,
        head_channels=32,
    )  # fmt: skip
    assert model({"sar": torch.rand(1, 2, 64, 64), "s2": torch.rand(1, 13, 64, 64)}).shape == (
        1,
        13,
        64,
        64,
    )
    by_role = build_finetune_model(
        "sen12ms_cr", weights="random", model_cfg=SMALL, img_size=64, head_channels=32
    )
    assert by_role.keys == ["sar", "s2_cloudy"]
    assert by_role({"sar": torch.rand(1, 2, 64, 64), "s2": torch.rand(1, 13, 64, 64)}).shape == (
        1, 13, 64, 64,
    )  # fmt: skip
    with pytest.raises(KeyError, match=r"inputs lack \['s2'\]"):
        model({"sar": torch.rand(1, 2, 64, 64)})
    with pytest.raises(KeyError, match="has no input 'dsm'"):
        build_finetune_model("sen12ms_cr", weights="random", sensors=["dsm"], img_size=64)


def test_layer_decay_scales_rise_with_depth_to_one_at_the_head() -> None:
    model = build_finetune_model("bigearthnet", weights="random", model_cfg=SMALL, img_size=64)
    groups = layer_decay_groups(model, base_lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    names = {id(param): name for name, param in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scale) == sum(1 for _ in model.parameters())
    _, head_layer = layer_ids(model)
    assert head_layer == 9  # 8 blocks + 1

    order = ["backbone.stacked.proj.weight"]
    order += [
        f"backbone.encoder.stages.{i}.blocks.{j}.attn.qkv.weight"
        for i in range(4)
        for j in range(2)
    ]
    order += ["backbone.encoder.norm.weight", "head.fc.weight"]
    values = [scale[name] for name in order]
    assert values == sorted(values) and len(set(values)) == len(values) - 1
    assert values[0] == pytest.approx(0.5**9) and values[-1] == 1.0
    assert values[-2] == 1.0  # the final norm trains with the head
    merge = "backbone.encoder.stages.1.downsample.reduction.weight"
    assert scale[merge] == scale["backbone.encoder.stages.0.blocks.1.attn.qkv.weight"]
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay["head.fc.bias"] == 0 and decay["head.fc.weight"] == 0.05
    assert decay["backbone.encoder.stages.0.blocks.0.attn.relative_position_bias_table"] == 0

    optimizer = build_optimizer(groups, lr=1e-3)
    build_scheduler(
        optimizer, schedule="cosine", epochs=2, steps_per_epoch=4, warmup_epochs=0,
        warmup_lr=0.0,
    )  # fmt: skip
    lrs = {g["lr_scale"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[1.0] == pytest.approx(1e-3) and lrs[0.5**9] == pytest.approx(1e-3 * 0.5**9)
