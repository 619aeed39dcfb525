"""MLflow tracking: where runs go, how a resumed job continues its run, and what is logged.

Default store: an embedded SQLite file under the results folder, with artifacts beside it;
on a cluster point ``MLFLOW_TRACKING_URI`` (or the config's ``tracking_uri``) at a server,
because one SQLite file on a shared filesystem does not scale to many concurrent jobs.
Two traps of the SQLite store shape this module: creating the schema or the same experiment
from two processes at once fails or misfiles runs, so :func:`init_store` is called once before
jobs fan out; and concurrent writers occasionally see "database is locked", so every call
into MLflow goes through :func:`_retry`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
RUN_ID_FILE = "mlflow_run_id"


def resolve_tracking_uri(configured: str | None, results_root: str | Path) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then SQLite under ``results_root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(Path(results_root) / 'mlflow.db').resolve()}"


def artifact_root(results_root: str | Path) -> str:
    return (Path(results_root) / "mlartifacts").resolve().as_uri()


def _retry(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry an MLflow call that lost a race for the SQLite write lock."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            locked = "database is locked" in str(exc) or "UNIQUE constraint" in str(exc)
            if not locked or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def init_store(uri: str, experiments: Iterable[str], results_root: str | Path) -> None:
    """Create the store's schema and the experiments once, before parallel jobs start."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in experiments:
        if client.get_experiment_by_name(name) is None:
            location = None if not uri.startswith("sqlite:") else artifact_root(results_root)
            _retry(lambda name=name, location=location: client.create_experiment(name, location))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params (``a.b.c``), values as strings, truncated to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, default=str)[:6000]
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of the resolved config: tags runs and guards checkpoints."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def read_run_id(state_dir: str | Path) -> str | None:
    """The MLflow run id a job recorded in its folder (None before its first run)."""
    id_file = Path(state_dir) / RUN_ID_FILE
    return json.loads(id_file.read_text())["run_id"] if id_file.is_file() else None


class TrackedRun:
    """One MLflow run per training job, resumed by id after a requeue (same config only).

    Only the main process creates one (``enabled=False`` elsewhere turns every method into a
    no-op), so DDP ranks never race for the store.
    """

    def __init__(
        self,
        *,
        uri: str,
        experiment: str,
        run_name: str,
        state_dir: str | Path,
        results_root: str | Path,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        config_hash: str,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        import mlflow

        self._client = mlflow.MlflowClient(tracking_uri=uri)
        init_store(uri, [experiment], results_root)
        experiment_id = self._client.get_experiment_by_name(experiment).experiment_id
        id_file = Path(state_dir) / RUN_ID_FILE
        if id_file.is_file():
            previous = json.loads(id_file.read_text())
            if previous["config_hash"] == config_hash:
                self.run_id = previous["run_id"]
                _retry(lambda: self._client.update_run(self.run_id, status="RUNNING"))
                log.info("resuming MLflow run %s", self.run_id)
                return
            log.info("config changed since MLflow run %s: starting a new run", previous["run_id"])
        run = _retry(
            lambda: self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        )
        self.run_id = run.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(json.dumps({"run_id": self.run_id, "config_hash": config_hash}) + "\n")
        items = list(flatten(params).items())
        for start in range(0, len(items), 100):
            chunk = [mlflow.entities.Param(k, v) for k, v in items[start : start + 100]]
            _retry(lambda chunk=chunk: self._client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        _retry(lambda: self._client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            _retry(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            for key, value in tags.items():
                _retry(lambda key=key, value=value: self._client.set_tag(self.run_id, key, value))

    def finish(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED (a preempted job: it will be resumed)."""
        if self.enabled:
            _retry(lambda: self._client.set_terminated(self.run_id, status=status))
