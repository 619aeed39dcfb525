"""The encoder as an MLflow model: logged per run, registered, aliased, loaded back unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import torch

from msgfm.model.factory import PretrainedBackbone, build_model, load_encoder
from msgfm.model_registry import log_encoder_model
from msgfm.tables.aggregate import write_tables
from msgfm.tracked_run import TrackedRun
from msgfm.tracking import ENCODER_MODEL, TABLE3_ALIAS, alias_table3_encoder, resolve_tracking_uri

SMALL = {"preset": "demo", "embed_dim": 16, "num_heads": [1, 1, 2, 2]}


def encoder_file(path: Path, seed: int) -> Path:
    """A checkpoint whose stems standardise with measured-looking (non-identity) statistics."""
    torch.manual_seed(seed)
    model = build_model(SMALL)
    for stem in model.embeds.values():
        channels = len(stem.input_mean)
        stem.set_input_statistics(torch.rand(channels), torch.rand(channels) + 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "model": model.state_dict()}, path)
    return path


def finished_run(results: Path, job: str, encoder: Path, *, register: bool) -> str:
    run = TrackedRun(
        uri=resolve_tracking_uri(None, results), experiment="msgfm-table3", run_name=job,
        state_dir=results / job, results_root=results, tags={}, params={}, config_hash="c",
    )  # fmt: skip
    info = log_encoder_model(run.uri, run.run_id, encoder, register=register)
    assert (info.registered_model_version is not None) == register
    run.finish()
    return run.run_id


def test_the_registered_encoder_gives_load_encoders_features(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, tmp_path)
    first = encoder_file(tmp_path / "t3_first" / "encoder.pt", seed=0)
    second = encoder_file(tmp_path / "t3_second" / "encoder.pt", seed=1)
    runs = [
        finished_run(tmp_path, "t3_first", first, register=True),
        finished_run(tmp_path, "t3_second", second, register=True),
        finished_run(tmp_path, "t6_row", second, register=False),  # logged, not registered
    ]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging put MLflow's global store back
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ URIs are looked up
    client = mlflow.MlflowClient(uri)
    versions = {
        v.run_id: str(v.version) for v in client.search_model_versions(f"name='{ENCODER_MODEL}'")
    }
    assert versions == {runs[0]: "1", runs[1]: "2"}  # a version per Table 3 run
    for run_id in runs:  # every run shows its model (the UI's Model column), still FINISHED
        run = client.get_run(run_id)
        assert len(run.outputs.model_outputs) == 1 and run.info.status == "FINISHED"

    # Table 3 was written from the first run: the alias follows it, not the newest version.
    assert alias_table3_encoder(uri, {runs[0], "another-run"}) == "1"
    assert alias_table3_encoder(uri, {runs[2]}) is None
    model = mlflow.pyfunc.load_model(f"models:/{ENCODER_MODEL}@{TABLE3_ALIAS}")
    reference = load_encoder(first).eval()
    loaded = model.unwrap_python_model().encoder
    assert isinstance(loaded, PretrainedBackbone) and not loaded.training
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    torch.manual_seed(2)
    for sensor, channels in {"s2": 13, "sar": 2, "rgb": 3}.items():
        image = torch.randn(2, channels, 64, 64)
        with torch.no_grad():
            want = reference(image, sensor)
        got = model.predict(image.numpy(), params={"sensor": sensor})
        assert torch.equal(torch.from_numpy(got), want), sensor
        assert torch.equal(loaded(image, sensor), want), sensor
    other = load_encoder(second).eval()  # version 2 is another encoder: the check can tell
    with torch.no_grad():
        assert not torch.equal(other(image, "rgb"), reference(image, "rgb"))

    metadata = model.metadata.metadata
    assert metadata["sensors"] == {"rgb": 3, "s2": 13, "sar": 2, "dsm": 1}
    for sensor, stem in reference.embeds.items():
        assert metadata["input_statistics"][sensor] == {
            "mean": stem.input_mean.tolist(), "std": stem.input_std.tolist()
        }  # fmt: skip
    assert mlflow.pyfunc.load_model(f"models:/{ENCODER_MODEL}/2").metadata.run_id == runs[1]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{ENCODER_MODEL}/1"))
    pinned = dict(line.split("==") for line in requirements.read_text().split())
    assert pinned["torch"] == torch.__version__.split("+")[0] and {"timm", "numpy"} <= set(pinned)


def test_writing_table3_aliases_the_encoder_behind_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, tmp_path)
    job = tmp_path / "pretrain" / "t3_msgfm"
    behind = finished_run(tmp_path, "pretrain/t3_msgfm", encoder_file(job / "encoder.pt", 0),
                          register=True)  # fmt: skip
    (job / "metrics.json").write_text('{"device_hours": 5.0}')
    # a newer version from elsewhere (another store's copy, a changed config): not Table 3's
    finished_run(tmp_path, "elsewhere", encoder_file(tmp_path / "e.pt", 1), register=True)
    cell = tmp_path / "finetune" / "bigearthnet" / "t3_msgfm" / "stacked" / "frac0.1" / "seed0"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text('{"mAP_micro": 80.0, "device_hours": 1.0}')
    write_tables([cell / "metrics.json"], tmp_path / "finetune", tmp_path / "tables",
                 tables=["table3"], pretrain_root=tmp_path / "pretrain",
                 tracking=(uri, tmp_path))  # fmt: skip
    aliased = mlflow.MlflowClient(uri).get_model_version_by_alias(ENCODER_MODEL, TABLE3_ALIAS)
    assert (aliased.run_id, str(aliased.version)) == (behind, "1")
