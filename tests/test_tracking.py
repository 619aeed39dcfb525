"""MLflow tracking against a real embedded SQLite store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from msgfm.tracking import (  # noqa: E402
    WORKFLOW_RUN_ENV,
    TrackedRun,
    config_hash,
    finish_workflow_run,
    flatten,
    resolve_tracking_uri,
    start_workflow_run,
)


def open_run(results: Path, state: Path, name: str = "run", config: str = "c1") -> TrackedRun:
    uri = resolve_tracking_uri(None, results)
    return TrackedRun(
        uri=uri,
        experiment="table6",
        run_name=name,
        state_dir=state,
        results_root=results,
        tags={"variant": name, "table": "6"},
        params={"model": {"moe": True, "experts": 8}, "cross_rate": 0.5},
        config_hash=config,
    )


def test_default_store_is_sqlite_under_results(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:9"


def test_a_resumed_job_continues_the_same_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = open_run(tmp_path, tmp_path / "job")
    run.log_metrics({"loss": 1.0}, step=1)
    run.finish("KILLED")
    again = open_run(tmp_path, tmp_path / "job")
    assert again.run_id == run.run_id
    again.log_metrics({"loss": 0.5}, step=2)
    again.finish()
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    stored = client.get_run(run.run_id)
    assert stored.data.params["model.experts"] == "8"
    assert stored.data.tags["variant"] == "run"
    assert stored.info.status == "FINISHED"
    changed = open_run(tmp_path, tmp_path / "job", config="c2")
    assert changed.run_id != run.run_id  # another config is another run, the old one stays


def test_disabled_run_touches_nothing(tmp_path: Path) -> None:
    run = TrackedRun(
        uri="sqlite:///never.db", experiment="x", run_name="r", state_dir=tmp_path,
        results_root=tmp_path, tags={}, params={}, config_hash="c", enabled=False,
    )  # fmt: skip
    run.log_metrics({"loss": 1.0}, step=0)
    run.finish()
    assert list(tmp_path.iterdir()) == []


def test_flatten_and_hash_are_stable() -> None:
    config = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert flatten(config) == {"a.b": "1", "a.c": "[1, 2]", "d": '"x"'}
    assert config_hash(config) == config_hash({"d": "x", "a": {"c": [1, 2], "b": 1}})
    assert config_hash(config) != config_hash({**config, "d": "y"})


def _writer(results: str, index: int) -> None:
    run = open_run(Path(results), Path(results) / f"job{index}", name=f"job{index}")
    for step in range(5):
        run.log_metrics({"loss": float(step), "writer": float(index)}, step=step)
    run.finish()


@pytest.mark.slow
def test_eight_concurrent_writers_lose_no_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, tmp_path)
    # Once, before the jobs fan out (as onstart does): the store, the experiment, the parent.
    parent = start_workflow_run(
        uri, tmp_path, ["table6"], config={}, targets=["all"], command="snakemake"
    )
    monkeypatch.setenv(WORKFLOW_RUN_ENV, parent)  # inherited by the spawned jobs
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * 8
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("table6")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["variant"] for r in runs) == sorted(f"job{i}" for i in range(8))
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 5
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])
    assert finish_workflow_run(uri, parent, "FINISHED")["runs/finished"] == 8.0
