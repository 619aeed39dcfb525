"""MLflow tracking: where runs go and what is logged; a training job's own run, continued
when the job resumes, is :class:`msgfm.tracked_run.TrackedRun`.

Default store: an embedded SQLite file under the results folder, with artifacts beside it;
on a cluster point ``MLFLOW_TRACKING_URI`` (or the config's ``tracking_uri``) at a server,
because one SQLite file on a shared filesystem does not scale to many concurrent jobs (the
workflow refuses it there: :func:`check_cluster_store`).
Two traps of the SQLite store shape this module: creating the schema or the same experiment
from two processes at once fails or misfiles runs, so :func:`init_store` is called once before
jobs fan out; and concurrent writers occasionally see "database is locked", so every call
into MLflow goes through :func:`_retry`.

Layout in the store: one experiment per paper table (``msgfm-table3/5/6``) holds the table's
pretraining runs, the finetuning runs that start from them and a ``tables`` run with the
written tables; ``msgfm-workflow`` holds one parent run per ``snakemake`` invocation. Jobs are
linked to that parent by a tag rather than nested with ``mlflow.parentRunId``: the UI nests runs
only inside one experiment, and a job's experiment is its table's.

Nothing recorded holds a credential: every param, tag and text artifact goes through
:func:`msgfm.redaction.redact` (a mirror's password, a signed link's token, the tracking
server's database password in ``tracking_uri``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from msgfm import plan
from msgfm.errors import MsgfmError
from msgfm.redaction import redact, redact_text, redact_url

if TYPE_CHECKING:  # pandas and numpy stay unimported while Snakemake plans
    from msgfm.data.shards import ShardSet

log = logging.getLogger(__name__)
T = TypeVar("T")
RUN_ID_FILE = "mlflow_run_id"
WORKFLOW_EXPERIMENT = "msgfm-workflow"
# Set by the workflow's onstart handler; every job started by that invocation inherits it
# (locally as a child process, on SLURM through sbatch's exported environment).
WORKFLOW_RUN_ENV = "MSGFM_WORKFLOW_RUN_ID"
WORKFLOW_TAG = "msgfm.workflow_run_id"  # the invocation that created a run
RESUMED_TAG = "msgfm.resumed_by"  # later invocations that continued it, comma-separated
# MLflow 3's UI opens an experiment without this tag on its GenAI traces overview (empty here),
# with it on the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
ENCODER_MODEL = "msgfm-encoder"  # registered model of the encoders behind Table 3 (paper §4)
TABLE3_ALIAS = "table3"  # the version behind the written Table 3


def resolve_tracking_uri(configured: str | None, results_root: str | Path) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then SQLite under ``results_root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(Path(results_root) / 'mlflow.db').resolve()}"


class ClusterStoreError(MsgfmError):
    """The tracking store cannot take the concurrent writers of a cluster run."""


# README.md, "Running on a cluster": the same commands.
_SERVER_HOWTO = """\
  # once: a database for MLflow (any PostgreSQL >= 12 the site runs), and the driver
  createdb -h db.internal -U mlflow mlflow && pip install psycopg2-binary
  # the server, on a service node, bound to its cluster-internal address (10.1.0.5 here:
  # never a public interface); artifacts go through it to a shared folder
  mlflow server --host 10.1.0.5 --port 5000 --workers 4 \\
      --backend-store-uri postgresql://mlflow:$PGPASSWORD@db.internal:5432/mlflow \\
      --artifacts-destination /shared/project/mlartifacts
  snakemake --profile slurm --config tracking_uri=http://10.1.0.5:5000   # or MLFLOW_TRACKING_URI"""


def check_cluster_store(uri: str, cluster_jobs: int | None, *, sqlite_allowed: bool) -> None:
    """Refuse an SQLite store when jobs may write to it from several nodes at once.

    Called while Snakemake plans (before onstart creates the store, before any job is submitted)
    with the URI the jobs will resolve. ``cluster_jobs``: how many jobs Snakemake may run at once
    on other machines (its ``--jobs``), None when they run on this one. Under a cluster executor
    every job may land on another node, and SQLite's file locks over NFS or Lustre are slow or
    broken: writers wait, or runs and points go missing. Servers (http), databases
    (postgresql, mysql) and file stores (one folder per run, no shared lock) pass.
    ``sqlite_allowed`` (config ``tracking_sqlite_on_cluster``) is for a one-node cluster, where
    the file sits on the jobs' own disk.
    """
    on_cluster = cluster_jobs is not None and cluster_jobs > 1
    if not uri.startswith("sqlite:") or not on_cluster or sqlite_allowed:
        return
    raise ClusterStoreError(
        f"tracking_uri: {redact_url(uri)} is an SQLite file, but this run sends jobs to a cluster "
        "(--jobs > 1), each of which may write to it from another node; expected an MLflow "
        "server (tracking_uri=http://HOST:PORT or MLFLOW_TRACKING_URI), because SQLite's locks "
        "on a shared filesystem are slow or broken. Start one backed by PostgreSQL (README.md, "
        f'"Running on a cluster"):\n{_SERVER_HOWTO}\n'
        "Only if every job runs on the machine whose disk holds the file (a one-node cluster): "
        "--config tracking_sqlite_on_cluster=true."
    )


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
    """Create the store's schema and the experiments once, before parallel jobs start; each
    declares its kind (:data:`EXPERIMENT_KIND`), also one created before the tag existed."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = None if not uri.startswith("sqlite:") else artifact_root(results_root)
            _retry(
                lambda name=name, location=location: client.create_experiment(
                    name, location, tags=EXPERIMENT_KIND
                )
            )
            continue
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:
                _retry(lambda key=key, value=value, experiment=experiment: (
                    client.set_experiment_tag(experiment.experiment_id, key, value)
                ))  # fmt: skip


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
    """A short stable hash of a resolved config."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# Where a job reads and writes, not what it trains: moving the results folder or switching to a
# tracking server must neither rerun a finished job nor set a half-done checkpoint aside.
LOCATION_KEYS = frozenset(
    {"shards_root", "results_root", "tracking_uri", "shards", "checkpoint", "subset"}
)


# How a job runs, not what it trains (on CPU the weights are bitwise the same either way; on a
# GPU within its usual nondeterminism): switching one on must not set a half-done checkpoint
# aside. Keys of a job's "pretrain" or "finetune" settings.
RUN_CONTROL_KEYS = frozenset(
    {"log_every", "checkpoint_every", "preempt_check_every", "num_workers", "figure_examples",
     "compile", "fused_adamw", "tf32", "activation_checkpointing"}
)  # fmt: skip


def job_hash(config: Mapping[str, Any]) -> str:
    """The identity of a training job: the hash of what decides its weights (its config less
    :data:`LOCATION_KEYS` and :data:`RUN_CONTROL_KEYS`). Guards its checkpoint and tags (and
    resumes) its MLflow run."""
    identity = {k: v for k, v in config.items() if k not in LOCATION_KEYS}
    for stage in ("pretrain", "finetune"):
        if isinstance(identity.get(stage), Mapping):
            settings = identity[stage].items()
            identity[stage] = {k: v for k, v in settings if k not in RUN_CONTROL_KEYS}
    return config_hash(identity)


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


def source_tags(entry_point: str) -> dict[str, str]:
    """The code behind a run: our ``git_commit`` and MLflow's standard source tags (the UI's
    Source column shows the entry point, and links the commit), ``entry_point`` being the
    command that runs the stage (``python -m msgfm pretrain``)."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    commit = git_commit()
    tags = {"git_commit": commit, MLFLOW_SOURCE_NAME: entry_point, MLFLOW_SOURCE_TYPE: "LOCAL"}
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def shard_set_input(shards: ShardSet, context: str) -> Any:
    """A shard set as an MLflow dataset input: named after its folder, its digest the index's
    (:func:`msgfm.data.shards.index_digest`: the same samples, the same digest), its source the
    folder; ``context`` (``training``) says what the run used it for. Fills the Dataset column."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from msgfm.data.shards import index_digest

    # "local" with {"uri": ...}: how mlflow.data records a folder (mlflow.data.get_source reads
    # it back as a LocalArtifactDatasetSource).
    source = json.dumps({"uri": redact_url(str(shards.path.resolve()))})
    dataset = Dataset(shards.path.name, index_digest(shards.path), "local", source)
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """A nested config as params (redacted), in batches within MLflow's 100-per-call limit."""
    from mlflow.entities import Param

    items = list(flatten(redact(params)).items())
    for start in range(0, len(items), 100):
        chunk = [Param(k, v) for k, v in items[start : start + 100]]
        _retry(lambda chunk=chunk: client.log_batch(run_id, params=chunk))


def _log_paths(client: Any, run_id: str, paths: Iterable[str | Path]) -> None:
    """Files as top-level artifacts, folders under their own name; missing paths are skipped
    (a failed invocation may not have written its tables). A text file is uploaded redacted:
    Snakemake's log holds every shell command it ran, mirror URLs included."""
    for path in map(Path, paths):
        if path.is_dir():
            _retry(lambda path=path: client.log_artifacts(run_id, str(path), path.name))
        elif path.is_file():
            try:
                text = redact_text(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                _retry(lambda path=path: client.log_artifact(run_id, str(path)))
                continue
            _retry(lambda path=path, text=text: client.log_text(run_id, text, path.name))


def start_workflow_run(
    uri: str,
    results_root: str | Path,
    experiments: Iterable[str],
    *,
    config: Mapping[str, Any],
    targets: Iterable[str],
    command: str,
) -> str:
    """Create the store, every experiment the jobs use and the parent run of one invocation.

    Called once before jobs fan out (the SQLite races of :func:`init_store`). The parent run
    carries the workflow config as params and its hash, the git commit, the targets and the
    command line; returns its id for the jobs to tag their runs with (:data:`WORKFLOW_RUN_ENV`).
    """
    import mlflow

    init_store(uri, [*experiments, WORKFLOW_EXPERIMENT], results_root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(WORKFLOW_EXPERIMENT).experiment_id
    targets = sorted(targets)
    tags = {
        "config_hash": config_hash(config),
        **source_tags("snakemake"),
        "targets": redact_text(" ".join(targets))[:5000],
        "command": redact_text(command)[:5000],
    }
    name = f"snakemake {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"
    run = _retry(lambda: client.create_run(experiment_id, run_name=name, tags=tags))
    run_id = run.info.run_id
    _log_params(client, run_id, config)
    _retry(lambda: client.log_dict(run_id, redact(config), "config.json"))
    listing = redact_text("\n".join(targets)) + "\n"  # a target may be a remote file's URL
    _retry(lambda: client.log_text(run_id, listing, "targets.txt"))
    return run_id


def linked_runs(client: Any, workflow_run_id: str) -> list[Any]:
    """Every run an invocation created or continued, in any experiment."""
    experiment_ids = [e.experiment_id for e in _retry(client.search_experiments)]
    found: dict[str, Any] = {}
    for query in (
        f"tags.`{WORKFLOW_TAG}` = '{workflow_run_id}'",
        f"tags.`{RESUMED_TAG}` LIKE '%{workflow_run_id}%'",
    ):
        token = None
        while True:
            page = _retry(
                lambda query=query, token=token: client.search_runs(
                    experiment_ids, query, max_results=1000, page_token=token
                )
            )
            found.update((run.info.run_id, run) for run in page)
            token = page.token
            if not token:
                break
    return list(found.values())


def finish_workflow_run(
    uri: str, run_id: str, status: str, artifacts: Iterable[str | Path] = ()
) -> dict[str, float]:
    """End an invocation's parent run: the totals of its linked runs, its artifacts (tables,
    Snakemake's log) and its final status (FINISHED or FAILED). Returns the totals."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = linked_runs(client, run_id)
    totals = {
        "runs/linked": float(len(runs)),
        "runs/finished": float(sum(r.info.status == "FINISHED" for r in runs)),
        "cost/device_hours": sum(r.data.metrics.get("cost/device_hours", 0.0) for r in runs),
    }
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in totals.items()]
    _retry(lambda: client.log_batch(run_id, metrics=metrics))
    _log_paths(client, run_id, artifacts)
    _retry(lambda: client.set_terminated(run_id, status=status))
    return totals


def log_table_run(
    uri: str,
    results_root: str | Path,
    table: str,
    files: Iterable[str | Path],
    metrics: Mapping[str, float],
) -> str:
    """A ``tables`` run in the table's experiment with its written files as artifacts and its
    totals as metrics, linked to the invocation that wrote it. Returns the run id."""
    import mlflow
    from mlflow.entities import Metric

    experiment = plan.experiment(table)
    init_store(uri, [experiment], results_root)  # a no-op under the workflow (onstart made it)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {"stage": "tables", "table": table, **source_tags("python -m msgfm tables")}
    if os.environ.get(WORKFLOW_RUN_ENV):
        tags[WORKFLOW_TAG] = os.environ[WORKFLOW_RUN_ENV]
    run_id = _retry(
        lambda: client.create_run(experiment_id, run_name=f"{table} tables", tags=tags)
    ).info.run_id
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]  # NaN: skip
    _retry(lambda: client.log_batch(run_id, metrics=batch))
    _log_paths(client, run_id, files)
    _retry(lambda: client.set_terminated(run_id, status="FINISHED"))
    return run_id


def tag_job_runs(
    uri: str,
    tags_by_job: Mapping[str | Path, Mapping[str, str]],
    metrics_by_job: Mapping[str | Path, Mapping[str, float]] | None = None,
) -> int:
    """Add tags (and metrics) to the runs whose ids job folders recorded; returns how many
    runs were annotated.

    A folder without a run id (a job that ran without tracking) is skipped."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient(tracking_uri=uri)
    metrics_by_job = metrics_by_job or {}
    now = int(time.time() * 1000)
    tagged = 0
    for job in {**tags_by_job, **metrics_by_job}:
        run_id = read_run_id(job)
        if run_id is None:
            continue
        tags = [RunTag(k, v) for k, v in tags_by_job.get(job, {}).items()]
        metrics = [Metric(k, v, now, 0) for k, v in metrics_by_job.get(job, {}).items()]
        try:
            _retry(
                lambda run_id=run_id, tags=tags, metrics=metrics: client.log_batch(
                    run_id, metrics=metrics, tags=tags
                )
            )
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("%s: its MLflow run %s is not in %s; left untagged", job, run_id, uri)
            continue
        tagged += 1
    return tagged


def read_run_id(state_dir: str | Path) -> str | None:
    """The MLflow run id a job recorded in its folder (None before its first run)."""
    id_file = Path(state_dir) / RUN_ID_FILE
    return json.loads(id_file.read_text())["run_id"] if id_file.is_file() else None


def alias_table3_encoder(uri: str, run_ids: Collection[str]) -> str | None:
    """Point :data:`TABLE3_ALIAS` at the newest registered version logged by one of ``run_ids``
    (the pretraining run behind Table 3's rows); returns its version, None if none is."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = _retry(lambda: client.search_model_versions(f"name = '{ENCODER_MODEL}'"))
    versions = [v for v in found if v.run_id in run_ids]
    if not versions:
        return None
    newest = str(max(int(v.version) for v in versions))
    _retry(lambda: client.set_registered_model_alias(ENCODER_MODEL, TABLE3_ALIAS, newest))
    return newest
