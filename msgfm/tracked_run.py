"""One MLflow run per training job (:class:`TrackedRun`), resumed by id after a requeue.

Where runs go and what the workflow records around them: :mod:`msgfm.tracking`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgfm.metric_writer import MetricWriter
from msgfm.redaction import redact
from msgfm.tracking import (
    RESUMED_TAG,
    RUN_ID_FILE,
    WORKFLOW_RUN_ENV,
    WORKFLOW_TAG,
    _log_params,
    _retry,
    init_store,
    shard_set_input,
)

if TYPE_CHECKING:
    from msgfm.data.shards import ShardSet

log = logging.getLogger(__name__)


class TrackedRun:
    """One MLflow run per training job, resumed by id after a requeue (same config only).

    Only the main process creates one (``enabled=False`` elsewhere turns every method into a
    no-op), so DDP ranks never race for the store. Metrics are written by a background thread
    (:mod:`msgfm.metric_writer`: a slow or locked store must not stall the training step);
    :meth:`flush` waits for them. The other calls are rare and synchronous, and flush first, so
    that the store sees the run's calls in the order the job made them (no run is terminated
    with points still queued).

    A job killed outright (SIGKILL, a node lost) leaves its run RUNNING, with points logged
    after its last checkpoint. Its rerun continues that run and retrains those steps: their
    points are in the store already and are not logged again (:meth:`log_metrics`); if the
    config changed meanwhile, the new run closes the old one as KILLED.
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
        self.uri = uri
        self.run_id: str | None = None
        self._stored_through: dict[str, int] = {}  # metric -> last step the store holds
        if not enabled:
            return
        import mlflow
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        self._client = mlflow.MlflowClient(tracking_uri=uri)
        self._metrics: MetricWriter[Any] = MetricWriter(
            self._write_metrics,
            name=f"MLflow metrics of {run_name}",
            max_items=MAX_METRICS_PER_BATCH,
        )
        init_store(uri, [experiment], results_root)
        experiment_id = self._client.get_experiment_by_name(experiment).experiment_id
        id_file = Path(state_dir) / RUN_ID_FILE
        if id_file.is_file():
            previous = json.loads(id_file.read_text())
            if previous["config_hash"] != config_hash:
                log.info("config changed since MLflow run %s: new run", previous["run_id"])
                self._close_if_abandoned(previous["run_id"])
            elif self._resume(previous["run_id"]):
                return
            else:  # the job moved to another store (e.g. from SQLite to a tracking server)
                log.info("MLflow run %s is not in %s: starting a new run", previous["run_id"], uri)
        workflow_run = os.environ.get(WORKFLOW_RUN_ENV)
        link = {WORKFLOW_TAG: workflow_run} if workflow_run else {}
        tags = redact({**tags, **link})
        run = _retry(lambda: self._client.create_run(experiment_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(json.dumps({"run_id": self.run_id, "config_hash": config_hash}) + "\n")
        _log_params(self._client, self.run_id, params)

    def _resume(self, run_id: str) -> bool:
        """Continue ``run_id`` if this store holds it."""
        import mlflow

        try:
            _retry(lambda: self._client.update_run(run_id, status="RUNNING"))
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        self.run_id = run_id
        self._stored_through = self._last_steps()
        self._link_resumption()
        log.info("resuming MLflow run %s", run_id)
        return True

    def _last_steps(self) -> dict[str, int]:
        """The last step of each metric the run holds: a killed job logged past the checkpoint
        its rerun starts from."""
        keys = _retry(lambda: self._client.get_run(self.run_id)).data.metrics
        history = self._client.get_metric_history
        return {
            key: max(point.step for point in _retry(lambda key=key: history(self.run_id, key)))
            for key in keys
        }

    def _close_if_abandoned(self, run_id: str) -> None:
        """Mark KILLED a run of this job left RUNNING (its process died without closing it),
        now that a new config replaces it; a finished run stays as it is."""
        import mlflow

        try:
            status = _retry(lambda: self._client.get_run(run_id)).info.status
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return
        if status == "RUNNING":
            _retry(lambda: self._client.set_terminated(run_id, status="KILLED"))

    def _link_resumption(self) -> None:
        """Record the invocation that continues this run (a run keeps its creator's tag)."""
        workflow_run = os.environ.get(WORKFLOW_RUN_ENV)
        if not workflow_run:
            return
        tags = _retry(lambda: self._client.get_run(self.run_id)).data.tags
        earlier = [r for r in tags.get(RESUMED_TAG, "").split(",") if r]
        if workflow_run != tags.get(WORKFLOW_TAG) and workflow_run not in earlier:
            self.set_tags({RESUMED_TAG: ",".join([*earlier, workflow_run])})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue the points of one step and return at once (:meth:`flush` writes them). A point
        at a step its metric already reached in the store (a killed job's rerun) is dropped:
        each step is logged once (on CPU the retrained values are bitwise the same)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        stored = self._stored_through
        points = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if k not in stored or step > stored[k]
        ]
        if points:
            self._metrics.put(points)

    def _write_metrics(self, batch: list[Any]) -> None:
        _retry(lambda: self._client.log_batch(self.run_id, metrics=batch))

    def flush(self) -> None:
        """Wait until every queued point is in the store; raises
        :class:`~msgfm.metric_writer.MetricWriteError` if a write failed since the last flush."""
        if self.enabled:
            self._metrics.flush()

    def log_shard_sets(self, sets: Iterable[ShardSet], context: str = "training") -> None:
        """What the run trains on, as dataset inputs (:func:`shard_set_input`); a resumed run
        logging them again adds nothing (MLflow keeps one input per dataset)."""
        if self.enabled:
            inputs = [shard_set_input(one, context) for one in sets]
            _retry(lambda: self._client.log_inputs(self.run_id, datasets=inputs))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.flush()
            _retry(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.enabled:
            self.flush()
            for key, value in redact(tags).items():
                _retry(lambda key=key, value=value: self._client.set_tag(self.run_id, key, value))

    def finish(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED (a preempted job: it will be resumed)."""
        if self.enabled:
            self.flush()
            _retry(lambda: self._client.set_terminated(self.run_id, status=status))
