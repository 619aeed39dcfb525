"""MLflow tracking against a real embedded SQLite store."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from msgfm.data.shards import ShardSet, ShardWriter, index_digest  # noqa: E402
from msgfm.metric_writer import MetricWriteError  # noqa: E402
from msgfm.redaction import redact_text, redact_url  # noqa: E402
from msgfm.tracked_run import TrackedRun  # noqa: E402
from msgfm.tracking import (  # noqa: E402
    WORKFLOW_RUN_ENV,
    ClusterStoreError,
    check_cluster_store,
    config_hash,
    finish_workflow_run,
    flatten,
    git_commit,
    init_store,
    resolve_tracking_uri,
    source_tags,
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


SERVERS = ["http://10.1.0.5:5000", "postgresql://mlflow@db.internal:5432/mlflow", "file:///x"]


@pytest.mark.parametrize("uri", ["sqlite:////shared/results/mlflow.db", *SERVERS])
@pytest.mark.parametrize("cluster_jobs", [None, 1])
def test_any_store_serves_jobs_on_one_machine(uri: str, cluster_jobs: int | None) -> None:
    check_cluster_store(uri, cluster_jobs, sqlite_allowed=False)  # local, or one job at a time


@pytest.mark.parametrize("uri", SERVERS)
def test_servers_and_file_stores_serve_a_cluster(uri: str) -> None:
    check_cluster_store(uri, 100, sqlite_allowed=False)


def test_sqlite_on_a_cluster_is_refused_with_the_readme_commands() -> None:
    uri = "sqlite:////shared/results/mlflow.db"
    with pytest.raises(ClusterStoreError) as refused:
        check_cluster_store(uri, 100, sqlite_allowed=False)
    message = str(refused.value)
    assert message.startswith(f"tracking_uri: {uri} is an SQLite file")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [line.strip() for line in message.splitlines()[1:-1]]
    assert any(c.startswith("mlflow server") for c in commands)
    assert "--backend-store-uri postgresql://" in message
    assert all(command in readme for command in commands), "the README's commands drifted"
    check_cluster_store(uri, 100, sqlite_allowed=True)  # a one-node cluster, said explicitly


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


def _killed_job(results: Path, steps: range) -> str:
    """A job that logs ``steps`` (written: the checkpoint flushed them) and is SIGKILLed: no
    finish(), no exit handler. Returns its run id."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_tracking import open_run
run = open_run(Path({str(results)!r}), Path({str(results / "job")!r}))
for step in {list(steps)!r}:
    run.log_metrics({{"loss": float(step)}}, step=step)
run.flush()
print(run.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    repo = Path(__file__).resolve().parents[1]
    killed = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return killed.stdout.split()[-1]


def test_a_job_resumed_after_sigkill_logs_each_step_once(tmp_path: Path, monkeypatch) -> None:
    """Killed at step 5 after a checkpoint at step 3, the rerun trains steps 4 to 8 again:
    the points of steps 4 and 5 are in the store already and are not logged twice."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = _killed_job(tmp_path, range(1, 6))
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing ran to close it
    again = open_run(tmp_path, tmp_path / "job")
    assert again.run_id == run_id
    for step in range(4, 9):
        again.log_metrics({"loss": float(step), "lr": 0.1}, step=step)
    again.finish()
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [m.step for m in client.get_metric_history(run_id, "lr")] == [4, 5, 6, 7, 8]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_killed_run_superseded_by_a_new_config_is_closed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = _killed_job(tmp_path, range(1, 3))
    changed = open_run(tmp_path, tmp_path / "job", config="c2")
    assert changed.run_id != run_id
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    assert client.get_run(run_id).info.status == "KILLED"  # not RUNNING forever
    changed.finish()
    finished = open_run(tmp_path, tmp_path / "job", config="c3")
    assert client.get_run(changed.run_id).info.status == "FINISHED"  # a finished run stays so
    finished.finish()


def test_log_metrics_does_not_wait_for_the_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = open_run(tmp_path, tmp_path / "job")
    store_free, written, callers = threading.Event(), [], set()
    real_log_batch = run._client.log_batch

    def stuck_log_batch(run_id: str, metrics=(), **kwargs) -> None:
        callers.add(threading.current_thread().name)
        store_free.wait(timeout=5)  # a synchronous log_metrics would wait here, ten times
        real_log_batch(run_id, metrics=metrics, **kwargs)
        written.append(len(metrics))

    monkeypatch.setattr(run._client, "log_batch", stuck_log_batch)
    for step in range(10):
        run.log_metrics({"loss": float(step)}, step=step)
    assert written == []  # ten calls returned while the store was stuck on the first
    store_free.set()
    run.flush()
    assert sum(written) == 10
    assert threading.current_thread().name not in callers  # the training thread never writes


def test_every_point_is_stored_once_in_step_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = open_run(tmp_path, tmp_path / "job")
    store_free, calls = threading.Event(), []
    real_log_batch = run._client.log_batch

    def counted_log_batch(run_id: str, metrics=(), **kwargs) -> None:
        store_free.wait(timeout=5)
        calls.append(len(metrics))
        real_log_batch(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(run._client, "log_batch", counted_log_batch)
    for step in range(40):
        run.log_metrics({"loss": float(step), "lr": step / 100}, step=step)
    store_free.set()  # the store catches up: what queued meanwhile goes in fewer calls
    run.flush()
    assert len(calls) < 40 and max(calls) <= 1000
    wide = {f"m{i}": float(i) for i in range(1500)}  # above MLflow's 1000 points per call
    run.log_metrics(wide, step=40)
    run.log_metrics({"loss": 40.0}, step=40)
    run.finish()  # flushes before the run ends
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    loss = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(s, float(s)) for s in range(41)]
    assert len(client.get_metric_history(run.run_id, "lr")) == 40
    assert max(calls) <= 1000 and len(client.get_run(run.run_id).data.metrics) == 1502
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_failed_write_surfaces_at_flush(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = open_run(tmp_path, tmp_path / "job")

    def broken_log_batch(run_id: str, metrics=(), **kwargs) -> None:
        raise mlflow.exceptions.MlflowException("store is gone")

    monkeypatch.setattr(run._client, "log_batch", broken_log_batch)
    run.log_metrics({"loss": 1.0}, step=1)  # returns: the failure is the writer's
    with pytest.raises(MetricWriteError, match=r"1 metric write.*store is gone"):
        run.flush()
    run.flush()  # reported once
    run.log_metrics({"loss": 0.5}, step=2)
    with pytest.raises(MetricWriteError, match="store is gone"):
        run.finish()  # the run is not marked FINISHED with points lost
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    assert client.get_run(run.run_id).info.status == "RUNNING"


def test_points_still_queued_at_exit_are_written(tmp_path: Path, monkeypatch) -> None:
    """A job that dies before finish(): the interpreter's exit drains the queue."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_tracking import open_run
run = open_run(Path({str(tmp_path)!r}), Path({str(tmp_path / "job")!r}))
real_log_batch = run._client.log_batch
def slow_log_batch(*args, **kwargs):
    time.sleep(0.5)  # still writing when the script ends
    real_log_batch(*args, **kwargs)
run._client.log_batch = slow_log_batch
for step in range(5):
    run.log_metrics({{"loss": float(step)}}, step=step)
print(run.run_id)
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    client = mlflow.MlflowClient(resolve_tracking_uri(None, tmp_path))
    history = client.get_metric_history(done.stdout.split()[-1], "loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]


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


def test_a_jobs_identity_is_what_it_trains_not_where_or_how_it_runs() -> None:
    from msgfm.tracking import job_hash

    job = {
        "variant": {"name": "t6", "moe": True}, "world_size": 8,
        "pretrain": {"seed": 0, "amp": "bf16", "log_every": 10, "compile": "auto"},
        "shards_root": "/a/shards", "results_root": "/a", "tracking_uri": None,
    }  # fmt: skip
    moved = {**job, "shards_root": "/b/shards", "results_root": "/b",
             "tracking_uri": "http://127.0.0.1:5000"}  # fmt: skip
    faster = {**job, "pretrain": {**job["pretrain"], "log_every": 1, "compile": True}}
    assert job_hash(job) == job_hash(moved) == job_hash(faster)
    for trains_otherwise in (
        {**job, "world_size": 16},
        {**job, "pretrain": {**job["pretrain"], "amp": "fp16"}},
        {**job, "pretrain": {**job["pretrain"], "seed": 1}},
    ):
        assert job_hash(trains_otherwise) != job_hash(job)


# A mirror reached with a password and a signed link's token, a tracking server's database
# password: none of these may be recorded anywhere.
MIRROR = "https://alice:s3cret@mirror.example/msgfm?token=tok123&v=2"
TRACKING = "postgresql://mlflow:pgpass@db.internal:5432/mlflow"
SECRETS = ("s3cret", "tok123", "pgpass")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (MIRROR, "https://***@mirror.example/msgfm?token=***&v=2"),
        (TRACKING, "postgresql://***@db.internal:5432/mlflow"),
        ("https://ghp_abc@github.com/x.zip", "https://***@github.com/x.zip"),
        ("https://a.blob.core.windows.net/c/x.zip?sv=2022-11-02&se=2030&sig=ab%2Fc",
         "https://a.blob.core.windows.net/c/x.zip?sv=2022-11-02&se=2030&sig=***"),
        ("https://s3.example/b/x.tar?X-Amz-Credential=AK&X-Amz-Signature=ff&X-Amz-Expires=60",
         "https://s3.example/b/x.tar?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
        ("https://h/x?api_key=k&Password=p&page=2&design=3",
         "https://h/x?api_key=***&Password=***&page=2&design=3"),
        ("https://h/cb#access_token=t&state=1", "https://h/cb#access_token=***&state=1"),
        ("sqlite:////shared/results/mlflow.db", "sqlite:////shared/results/mlflow.db"),
        ("http://10.1.0.5:5000", "http://10.1.0.5:5000"),
    ],
)  # fmt: skip
def test_urls_lose_their_userinfo_and_secret_parameters(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_every_url_in_a_text_is_redacted_and_nothing_else() -> None:
    command = f"snakemake --config data.mirror={MIRROR} 'tracking_uri={TRACKING}' -n"
    assert redact_text(command) == (
        "snakemake --config data.mirror=https://***@mirror.example/msgfm?token=***&v=2 "
        "'tracking_uri=postgresql://***@db.internal:5432/mlflow' -n"
    )


def _stored_bytes(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file())


def test_no_credential_reaches_the_store(tmp_path: Path, monkeypatch) -> None:
    """Each sink: the parent run's params, its command tag, its config.json and the uploaded
    Snakemake log; a job run's params and tags. Then no byte of the store holds a secret."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "results"
    uri = resolve_tracking_uri(None, results)
    config = {"data": {"mirror": MIRROR}, "tracking_uri": TRACKING, "seed": 0}
    command = f"snakemake --config data.mirror={MIRROR} tracking_uri={TRACKING}"
    targets = ["all", f"{MIRROR}/file"]  # a remote file (Snakemake's storage plugins)
    parent = start_workflow_run(
        uri, results, ["table6"], config=config, targets=targets, command=command
    )
    monkeypatch.setenv(WORKFLOW_RUN_ENV, parent)
    job = TrackedRun(
        uri=uri, experiment="table6", run_name="job", state_dir=results / "job",
        results_root=results, tags={"source": MIRROR}, params=config, config_hash="c",
    )  # fmt: skip
    job.set_tags({"mirror": MIRROR})
    job.finish()
    snakemake_log = tmp_path / "snakemake.log"  # Snakemake writes the shell commands it runs
    snakemake_log.write_text(f"rule prepare:\n    python -m msgfm prepare x --mirror '{MIRROR}'\n")
    finish_workflow_run(uri, parent, "FINISHED", [snakemake_log])

    client = mlflow.MlflowClient(uri)
    for run_id in (parent, job.run_id):
        params = client.get_run(run_id).data.params
        assert params["data.mirror"] == json.dumps(redact_url(MIRROR))
        assert params["tracking_uri"] == '"postgresql://***@db.internal:5432/mlflow"'
    tags = client.get_run(parent).data.tags
    assert tags["command"] == redact_text(command)
    assert client.get_run(job.run_id).data.tags["mirror"] == redact_url(MIRROR)
    downloaded = Path(client.download_artifacts(parent, "", str(tmp_path / "artifacts")))
    uploaded = json.loads((downloaded / "config.json").read_text())
    assert uploaded["data"]["mirror"] == redact_url(MIRROR)
    assert f"--mirror '{redact_url(MIRROR)}'" in (downloaded / "snakemake.log").read_text()
    stored = _stored_bytes(results)
    assert b"mirror.example" in stored
    assert not [secret for secret in SECRETS if secret.encode() in stored]


def test_log_lines_of_the_cli_mask_urls(tmp_path: Path) -> None:
    script = f"""
import logging
from msgfm.cli import configure_logging
configure_logging(verbose=False)
logging.getLogger("msgfm.tracking").warning("run is not in %s, mirror %s", {TRACKING!r}, {MIRROR!r})
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert redact_url(MIRROR) in done.stderr and "db.internal" in done.stderr
    assert not [secret for secret in SECRETS if secret in done.stderr]


def test_a_tracking_server_error_does_not_print_its_password(tmp_path: Path) -> None:
    """MLflow names the server's URL, userinfo included, in the error a job dies with."""
    server = "http://bob:s3cret@127.0.0.1:9"  # nothing listens on the discard port
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env.pop("MLFLOW_TRACKING_URI", None)
    failed = subprocess.run(
        [sys.executable, "-m", "msgfm", "workflow-finish", "--tracking-uri", server,
         "--results-root", str(tmp_path), "--run-id", "abc", "--status", "FINISHED"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "http://***@127.0.0.1:9/api/" in failed.stderr  # the traceback, its URL masked
    assert "s3cret" not in failed.stderr


def _tiny_set(root: Path, samples: int) -> ShardSet:
    writer = ShardWriter(root, rows_per_shard=4)
    for i in range(samples):
        writer.add(f"tile{i}", {"rgb": np.full((3, 2, 2), i, np.uint8)}, split="train")
    writer.close({})
    return ShardSet(root)


def test_runs_follow_mlflow_conventions_kind_source_and_datasets(tmp_path: Path, monkeypatch):
    """The UI's runs table (not the GenAI overview), its Source and Dataset columns."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None, tmp_path)
    client = mlflow.MlflowClient(uri)
    client.create_experiment("older")  # made before experiments declared their kind
    init_store(uri, ["older", "newer"], tmp_path)
    for name in ("older", "newer"):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == (
            "custom_model_development"
        )
    geopile, mdas = _tiny_set(tmp_path / "geopile", 5), _tiny_set(tmp_path / "mdas", 3)
    run = open_run(tmp_path, tmp_path / "job")
    run.set_tags(source_tags("python -m msgfm pretrain"))
    run.log_shard_sets([geopile, mdas])
    run.finish("KILLED")
    again = open_run(tmp_path, tmp_path / "job")  # resumed: logs its inputs again
    again.log_shard_sets([geopile, mdas])
    again.finish()
    stored = client.get_run(run.run_id)
    tags = stored.data.tags
    assert tags["mlflow.source.name"] == "python -m msgfm pretrain"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == git_commit() != "unknown"
    inputs = {i.dataset.name: i for i in stored.inputs.dataset_inputs}
    assert sorted(inputs) == ["geopile", "mdas"]  # once each, though logged twice
    for shards in (geopile, mdas):
        logged = inputs[shards.path.name]
        assert logged.dataset.digest == index_digest(shards.path)
        assert json.loads(logged.dataset.source) == {"uri": str(shards.path.resolve())}
        assert mlflow.data.get_source(logged).uri == str(shards.path.resolve())
        assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}
    assert index_digest(geopile.path) != index_digest(mdas.path)
    assert index_digest(_tiny_set(tmp_path / "again", 5).path) == index_digest(geopile.path)
