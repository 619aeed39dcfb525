"""Backbone initialisation: msGFM checkpoints, random, timm Swin (in22k) and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.layers import resize_rel_pos_bias_table
from timm.models.swin_transformer import SwinTransformer

from msgfm.data.sensors import S2_BANDS
from msgfm.finetune.backbone import BackboneError, build_backbone, input_size_for
from msgfm.model.factory import build_model

SMALL = {"preset": "demo", "embed_dim": 16, "num_heads": [1, 1, 2, 2]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "encoder.pt"
    torch.save({"config": model.config, "model": model.state_dict()}, path)
    return path


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_msgfm_loads_encoder_and_stacks_stems(checkpoint: Path) -> None:
    backbone = build_backbone(
        "msgfm", sensors=["s2", "sar"], checkpoint=checkpoint, model_cfg=SMALL, img_size=128
    )
    state = _state(checkpoint)
    for name, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, state[f"encoder.{name}"]), name
    expected = torch.cat([state["embeds.s2.proj.weight"], state["embeds.sar.proj.weight"]], 1) / 2
    assert torch.allclose(backbone.stacked.proj.weight, expected)
    assert len(backbone.embeds) == 0 and backbone.input_size == 128
    out = backbone.forward_features(torch.rand(1, 15, 128, 128))
    assert out.shape == (1, 128, 4, 4)


def test_msgfm_derives_worldview_stems_from_s2(checkpoint: Path) -> None:
    backbone = build_backbone(
        "msgfm", sensors=["mul", "pan"], transfer="shared", checkpoint=checkpoint, img_size=64
    )
    s2 = _state(checkpoint)["embeds.s2.proj.weight"]
    band = {name: i for i, name in enumerate(S2_BANDS)}
    mul = backbone.embeds["mul"].proj.weight
    assert torch.allclose(mul[:, 0], s2[:, band["B01"]] * 13 / 8)  # coastal
    yellow = (s2[:, band["B03"]] + s2[:, band["B04"]]) / 2 * 13 / 8
    assert torch.allclose(mul[:, 3], yellow)
    pan = backbone.embeds["pan"].proj.weight[:, 0]
    visible = [band[b] for b in ("B02", "B03", "B04", "B05", "B06", "B07")]
    assert torch.allclose(pan, s2[:, visible].mean(1) * 13)
    assert backbone.forward_features(torch.rand(1, 8, 64, 64), "mul").shape == (1, 128, 2, 2)


def test_msgfm_errors_name_what_does_not_match(checkpoint: Path, tmp_path: Path) -> None:
    rgb_only = build_model({**SMALL, "sensors": {"rgb": 3}})
    path = tmp_path / "rgb.pt"
    torch.save({"config": rgb_only.config, "model": rgb_only.state_dict()}, path)
    with pytest.raises(BackboneError, match=r"rgb\.pt.*sensor 'sar'.*\['rgb'\]"):
        build_backbone("msgfm", sensors=["sar"], checkpoint=path, img_size=64)
    with pytest.raises(BackboneError, match=r"embed_dim: config 48 vs checkpoint 16"):
        build_backbone(
            "msgfm",
            sensors=["s2"],
            checkpoint=checkpoint,
            model_cfg={**SMALL, "embed_dim": 48, "num_heads": [1, 1, 1, 1]},
            img_size=64,
        )
    torch.save({"layers.0.blocks.0.norm1.weight": torch.ones(3)}, tmp_path / "timm.pt")
    with pytest.raises(BackboneError, match="not an msGFM pretraining checkpoint"):
        build_backbone("msgfm", sensors=["s2"], checkpoint=tmp_path / "timm.pt", img_size=64)
    with pytest.raises(ValueError, match="multiple of stride"):
        build_backbone("msgfm", sensors=["s2"], checkpoint=checkpoint, img_size=96)


def test_training_settings_may_differ_from_the_checkpoint(checkpoint: Path) -> None:
    backbone = build_backbone(
        "msgfm",
        sensors=["s2"],
        checkpoint=checkpoint,
        model_cfg={**SMALL, "drop_path_rate": 0.2},
        img_size=64,
    )
    assert backbone.encoder.stages[3].blocks[1].drop_path1.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize(
    "head", [{"distill": {"dim": 24}}, {"feature_recon": {"dim": 24}}], ids=["distill", "eva"]
)
def test_a_teacher_guided_encoder_finetunes_under_the_workflows_model_config(tmp_path, head):
    """Table 5's encoders were pretrained with a distillation head or feature decoders that the
    finetuning model config (the variant's, msgfm.plan.init_model) does not describe: they load
    all the same, with the encoder's weights."""
    torch.manual_seed(0)
    model = build_model({**SMALL, **head})
    path = tmp_path / "encoder.pt"
    torch.save({"config": model.config, "model": model.state_dict()}, path)
    backbone = build_backbone(
        "msgfm", sensors=["s2"], checkpoint=path, model_cfg=SMALL, img_size=64
    )
    for name, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[name]), name


def test_random_init_builds_any_sensor_set() -> None:
    backbone = build_backbone("random", sensors=["mul", "pan", "dsm"], model_cfg=SMALL, img_size=64)
    assert backbone.stacked.channels == (8, 1, 1)
    assert backbone.forward_features(torch.rand(2, 10, 64, 64)).shape == (2, 128, 2, 2)


def _timm_swin(window: int, img: int, embed: int = 16) -> SwinTransformer:
    torch.manual_seed(1)
    model = SwinTransformer(
        img_size=img,
        patch_size=4,
        window_size=window,
        embed_dim=embed,
        depths=(2, 2, 2, 2),
        num_heads=(1, 1, 2, 2),
    )
    with torch.no_grad():  # timm zero-inits tables' neighbours; make every weight distinct
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith("bias"):
                param.normal_()
    return model.eval()


def test_in22k_conversion_reproduces_timm_features() -> None:
    timm_model = _timm_swin(window=2, img=64)
    backbone = build_backbone(
        "in22k",
        sensors=["rgb", "s2"],
        transfer="shared",
        checkpoint=timm_model.state_dict(),
        model_cfg=SMALL,
        img_size=64,
    ).eval()
    image = torch.rand(2, 3, 64, 64)
    expected = timm_model.forward_features(image).permute(0, 3, 1, 2)
    assert torch.allclose(backbone.forward_features(image, "rgb"), expected, atol=1e-5)
    assert backbone.encoder.moe_blocks() == []  # IN-22k Swin-B is dense
    rgb = timm_model.state_dict()["patch_embed.proj.weight"]
    s2 = backbone.embeds["s2"].proj.weight
    assert torch.allclose(s2[:, S2_BANDS.index("B04")], rgb[:, 0] * 3 / 13)  # red
    assert torch.allclose(s2[:, 0], rgb.mean(1) * 3 / 13)  # coastal: mean RGB kernel


def test_in22k_window7_tables_are_resized_to_window6() -> None:
    timm_model = _timm_swin(window=7, img=224)
    cfg = {**SMALL, "img_size": 192, "window_size": 6}
    backbone = build_backbone(
        "in22k", sensors=["rgb"], checkpoint=timm_model.state_dict(), model_cfg=cfg, img_size=192
    )
    source = timm_model.state_dict()["layers.1.blocks.1.attn.relative_position_bias_table"]
    ours = backbone.encoder.stages[1].blocks[1].attn.relative_position_bias_table
    assert source.shape == (169, 1) and ours.shape == (121, 1)
    resized = resize_rel_pos_bias_table(source, new_window_size=(6, 6), new_bias_shape=(121, 1))
    assert torch.allclose(ours, resized)
    qkv = timm_model.state_dict()["layers.2.blocks.0.attn.qkv.weight"]
    assert torch.equal(backbone.encoder.stages[2].blocks[0].attn.qkv.weight, qkv)


def test_in22k_of_another_architecture_is_refused() -> None:
    wide = _timm_swin(window=2, img=64, embed=24).state_dict()
    with pytest.raises(BackboneError, match=r"qkv\.weight: shape \(72, 24\) vs our \(48, 16\)"):
        build_backbone("in22k", sensors=["rgb"], checkpoint=wide, model_cfg=SMALL, img_size=64)


def test_input_size_rounds_up_to_whole_windows() -> None:
    base = {"preset": "swin_base"}
    sizes = [input_size_for(n, base) for n in (120, 162, 192, 256, 512)]
    assert sizes == [192, 192, 192, 384, 576]
    assert input_size_for(120, {"preset": "demo"}) == 128
