"""msGFM's encoder as a TerraTorch backbone: built by name from a config, trained, same features.

TerraTorch is an optional extra (``msgfm[terratorch]``: 42 packages the pipeline does not use).
Where it is installed, the tests below run here; where it is not, ``test_in_own_venv`` installs
the extra into a venv layered over this one (this environment's packages stay visible and
untouched; only TerraTorch's own dependencies are added) and runs them there.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from registry_access import run_pip_or_skip

from msgfm.finetune.backbone import BANDS
from msgfm.model.factory import build_model, load_encoder

HAVE_TERRATORCH = importlib.util.find_spec("terratorch") is not None
needs_terratorch = pytest.mark.skipif(
    not HAVE_TERRATORCH,
    reason="terratorch not installed here (optional extra msgfm[terratorch]); "
    "test_in_own_venv runs these tests in a venv that has it",
)
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


@needs_terratorch
def test_bands_pick_the_sensors_and_their_order():
    from msgfm.finetune.terratorch_backbone import sensors_for_bands

    assert sensors_for_bands(S2_SAR) == ["s2", "sar"]
    assert sensors_for_bands([*BANDS["sar"], *BANDS["rgb"]]) == ["sar", "rgb"]
    with pytest.raises(ValueError, match=r"bands\[13:\] = \['VH', 'VV'\]"):
        sensors_for_bands([*BANDS["s2"], "VH", "VV"])


@needs_terratorch
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


@needs_terratorch
def test_checkpoint_that_is_not_an_encoder_is_named(tmp_path):
    from msgfm.finetune.backbone import BackboneError
    from msgfm.finetune.terratorch_backbone import msgfm_encoder

    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(BackboneError, match=r"weights\.pt: not an msGFM pretraining checkpoint"):
        msgfm_encoder(path, S2_SAR)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(HAVE_TERRATORCH, reason="terratorch is installed here: the tests above ran")
def test_in_own_venv(tmp_path_factory: pytest.TempPathFactory):
    """The tests above, in a venv over this one with the terratorch extra (~75 s here, 600 MB)."""
    venv = tmp_path_factory.mktemp("terratorch-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # this environment's packages (torch, pytest, pip…) under the new one, read-only
    (Path(site) / "msgfm-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    constraints = ROOT / "workflow" / "constraints.txt"
    run_pip_or_skip(
        [python, "-m", "pip", "install", "--quiet", "-c", constraints, "-e", f"{ROOT}[terratorch]"],
        "msgfm[terratorch]",
    )
    inner_tmp = tmp_path_factory.mktemp("terratorch-tests")  # not beside this session's folders
    done = subprocess.run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={inner_tmp}", "-rs",
         __file__, "-k", "not own_venv"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
