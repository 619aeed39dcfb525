"""msGFM's encoder as a TerraTorch backbone: built by name from a config, trained, same features.

TerraTorch is an optional extra of the pipeline (``msgfm[terratorch]``: 42 packages the
pipeline does not use) and part of the test environment (the ``dev`` extra), so these run
wherever the tests do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from msgfm.finetune.backbone import BANDS
from msgfm.model.factory import build_model, load_encoder

ROOT = Path(__file__).resolve().parents[1]
S2_SAR = [*BANDS["s2"], *BANDS["sar"]]
# The model_args of a TerraTorch config, as a user writes them; the test fills in the path.
SEGMENTATION_ARGS = """
backbone: msgfm_encoder
backbone_bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12, VV, VH]
decoder: UperNetDecoder
decoder_channels: 32
necks: [{name: SelectIndices, indices: [0, 1, 2, 3]}]
num_classes: 3
"""
CLASSIFICATION_ARGS = """
backbone: msgfm_encoder
backbone_bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12, VV, VH]
decoder: IdentityDecoder
num_classes: 4
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-preset (MoE) encoder.pt in the format the pretraining loop writes."""
    torch.manual_seed(0)
    model = build_model({"preset": "demo"})
    path = tmp_path_factory.mktemp("terratorch") / "encoder.pt"
    torch.save({"config": model.config, "model": model.state_dict()}, path)
    return path


def _model(args: str, checkpoint: Path) -> torch.nn.Module:
    from terratorch.registry import MODEL_FACTORY_REGISTRY

    import msgfm.finetune.terratorch_backbone  # noqa: F401  (registers msgfm_encoder)

    model_args = {**yaml.safe_load(args), "backbone_checkpoint_path": str(checkpoint)}
    return MODEL_FACTORY_REGISTRY.build("EncoderDecoderFactory").build_model(
        task="segmentation" if "UperNet" in args else "classification", **model_args
    )


def test_bands_pick_the_sensors_and_their_order():
    from msgfm.finetune.terratorch_backbone import sensors_for_bands

    assert sensors_for_bands(S2_SAR) == ["s2", "sar"]
    assert sensors_for_bands([*BANDS["sar"], *BANDS["rgb"]]) == ["sar", "rgb"]
    with pytest.raises(ValueError, match=r"bands\[13:\] = \['VH', 'VV'\]"):
        sensors_for_bands([*BANDS["s2"], "VH", "VV"])


@pytest.mark.parametrize("args", [SEGMENTATION_ARGS, CLASSIFICATION_ARGS], ids=["seg", "cls"])
def test_terratorch_builds_and_trains_around_the_encoder(args, checkpoint):
    from terratorch.registry import BACKBONE_REGISTRY

    model = _model(args, checkpoint)
    assert "msgfm_encoder" in BACKBONE_REGISTRY
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, len(S2_SAR), 64, 64, generator=generator)

    reference = load_encoder(checkpoint, ["s2", "sar"], stack=True).eval()
    model.eval()
    with torch.no_grad():
        final, stages = reference.forward_features(image, None, return_stages=True)
        features = model.encoder(image)
    assert len(features) == 5
    for ours, expected in zip(features, [*stages, final], strict=True):
        torch.testing.assert_close(ours, expected)

    segmentation = "UperNet" in args
    target = torch.randint(0, 3, (2, 64, 64)) if segmentation else torch.tensor([1, 3])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder.backbone.stacked.proj.weight.detach().clone()
    output = model(image).output
    assert output.shape == ((2, 3, 64, 64) if segmentation else (2, 4))
    loss = torch.nn.functional.cross_entropy(output, target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.encoder.backbone.stacked.proj.weight, before)


def test_checkpoint_that_is_not_an_encoder_is_named(tmp_path):
    from msgfm.finetune.backbone import BackboneError
    from msgfm.finetune.terratorch_backbone import msgfm_encoder

    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(BackboneError, match=r"weights\.pt: not an msGFM pretraining checkpoint"):
        msgfm_encoder(path, S2_SAR)
