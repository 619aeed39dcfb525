"""The workflow's MLflow layout: a parent run per invocation, one experiment per table, the
tables as artifacts and the runs behind each table row tagged with it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from msgfm.tables.aggregate import TABLE_FILES, write_tables  # noqa: E402
from msgfm.tracked_run import TrackedRun  # noqa: E402
from msgfm.tracking import (  # noqa: E402
    RESUMED_TAG,
    WORKFLOW_EXPERIMENT,
    WORKFLOW_RUN_ENV,
    WORKFLOW_TAG,
    finish_workflow_run,
    resolve_tracking_uri,
    start_workflow_run,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(WORKFLOW_RUN_ENV, raising=False)
    return resolve_tracking_uri(None, tmp_path)


def job_run(uri: str, results: Path, job: Path, experiment: str = "msgfm-table6") -> TrackedRun:
    return TrackedRun(
        uri=uri, experiment=experiment, run_name=job.name, state_dir=job, results_root=results,
        tags={"variant": job.name}, params={"seed": 0}, config_hash="c1",
    )  # fmt: skip


def test_parent_run_links_created_and_resumed_jobs(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"results_root": str(tmp_path), "finetune": {"seeds": [0, 1]}}
    first = start_workflow_run(
        store, tmp_path, ["msgfm-table6"], config=config, targets=["all"], command="snakemake"
    )
    client = mlflow.MlflowClient(store)
    parent = client.get_run(first)
    assert client.get_experiment(parent.info.experiment_id).name == WORKFLOW_EXPERIMENT
    assert parent.data.tags["targets"] == "all" and parent.data.tags["config_hash"]
    assert parent.data.tags["git_commit"] and parent.data.params["finetune.seeds"] == "[0, 1]"
    assert client.get_experiment_by_name("msgfm-table6") is not None  # made before jobs start

    monkeypatch.setenv(WORKFLOW_RUN_ENV, first)
    job = job_run(store, tmp_path, tmp_path / "job")
    job.log_metrics({"cost/device_hours": 1.5}, step=3)
    job.finish("KILLED")  # preempted; the invocation fails
    (tmp_path / "snakemake.log").write_text("error\n")
    totals = finish_workflow_run(store, first, "FAILED", [tmp_path / "snakemake.log"])
    assert totals == {"runs/linked": 1.0, "runs/finished": 0.0, "cost/device_hours": 1.5}
    assert client.get_run(first).info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(first)] == [
        "config.json", "snakemake.log", "targets.txt"
    ]  # fmt: skip

    # The next invocation resumes the job: same run, still its creator's, linked to both.
    second = start_workflow_run(
        store, tmp_path, ["msgfm-table6"], config=config, targets=["all"], command="snakemake"
    )
    monkeypatch.setenv(WORKFLOW_RUN_ENV, second)
    again = job_run(store, tmp_path, tmp_path / "job")
    assert again.run_id == job.run_id
    again.finish()
    tags = client.get_run(job.run_id).data.tags
    assert tags[WORKFLOW_TAG] == first and tags[RESUMED_TAG] == second
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "table6.md").write_text("| table |\n")
    totals = finish_workflow_run(store, second, "FINISHED", [tables, tmp_path / "absent.log"])
    assert totals["runs/linked"] == 1.0 and totals["runs/finished"] == 1.0
    assert client.get_run(second).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(second, "tables")] == ["tables/table6.md"]


def put(root: Path, task: str, init: str, fraction: float, **metrics: float) -> Path:
    path = root / task / init / "stacked" / f"frac{fraction:g}" / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path


def test_tables_are_logged_per_table_and_rows_tag_their_runs(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finetune, pretrain = tmp_path / "finetune", tmp_path / "pretrain"
    best = put(finetune, "bigearthnet", "t6_moe_cross50", 0.1, mAP_micro=80.0, device_hours=2.0)
    dense = put(finetune, "bigearthnet", "t6_dense_self", 0.1, mAP_micro=75.0, device_hours=1.0)
    untracked = put(finetune, "bigearthnet", "random", 0.1, mAP_micro=60.0, device_hours=1.0)
    (pretrain / "t6_moe_cross50").mkdir(parents=True)
    (pretrain / "t6_moe_cross50" / "metrics.json").write_text('{"device_hours": 5.0}')
    parent = start_workflow_run(
        store, tmp_path, ["msgfm-table3", "msgfm-table5", "msgfm-table6"],
        config={}, targets=["all"], command="snakemake",
    )  # fmt: skip
    monkeypatch.setenv(WORKFLOW_RUN_ENV, parent)
    runs = {
        "best": job_run(store, tmp_path, best.parent).run_id,
        "dense": job_run(store, tmp_path, dense.parent).run_id,
        "encoder": job_run(store, tmp_path, pretrain / "t6_moe_cross50").run_id,
    }
    paths = [best, dense, untracked]  # the random-init job ran without tracking: no run id
    write_tables(paths, finetune, tmp_path / "tables", pretrain_root=pretrain,
                 tracking=(store, tmp_path))  # fmt: skip

    client = mlflow.MlflowClient(store)
    for name in ("table3", "table5", "table6"):
        experiment = client.get_experiment_by_name(f"msgfm-{name}")
        (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'tables'")
        assert run.data.tags[WORKFLOW_TAG] == parent
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        assert artifacts == sorted(f"{name}{suffix}" for suffix in TABLE_FILES)
    table6 = client.get_experiment_by_name("msgfm-table6").experiment_id
    (tables6,) = client.search_runs([table6], "tags.stage = 'tables'")
    assert tables6.data.metrics["cost/finetune_device_hours"] == pytest.approx(3.0)
    assert tables6.data.metrics["cost/pretrain_device_hours"] == pytest.approx(5.0)

    def tags(key: str) -> dict[str, str]:
        return client.get_run(runs[key]).data.tags

    # Table 6's best row is also Table 5's "from scratch": one run, tagged for both tables.
    assert tags("best")["table6_row"] == "MoE ✓ cross ✓ 50%"
    assert tags("best")["table5_row"] == "From scratch"
    assert tags("best")["tables"] == "table5,table6"
    assert tags("dense")["table6_row"] == "MoE ✗ cross ✗ 0%" and tags("dense")["tables"] == "table6"
    assert tags("encoder")["table6_row"] == "MoE ✓ cross ✓ 50%"  # the pretraining run too
    assert tags("encoder")["tables"] == "table5,table6"
    # ... and receives its row's downstream cells, to set variants against results in the UI.
    metrics = client.get_run(runs["encoder"]).data.metrics
    assert metrics["bigearthnet_10pct/mAP_micro"] == pytest.approx(80.0)
    assert metrics["bigearthnet_10pct/mAP_micro/seeds"] == 1.0
    assert "bigearthnet_10pct/mAP_micro" not in client.get_run(runs["best"]).data.metrics
    # The parent counts the runs it linked: three jobs and three tables runs.
    assert finish_workflow_run(store, parent, "FINISHED")["runs/linked"] == 6.0


def test_finetune_cells_go_to_their_tables_experiment_once(tmp_path: Path) -> None:
    """Dry run of the demo DAG: each cell is one job, in its encoder's table's experiment."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", "config/demo.yaml",
         "--config", f"results_root={tmp_path}", f"data_root={tmp_path}/data"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    configs = [
        json.loads(match.replace("'\\''", "'"))
        for match in re.findall(r"finetune --config-json '(\{.*?\})' --out", result.stdout)
    ]
    assert configs, result.stdout[-3000:]
    cells = [(c["task"], c["init"], c["transfer"], c["fraction"], c["seed"]) for c in configs]
    assert len(cells) == len(set(cells))
    for job in configs:  # t3_msgfm and the random init are Table 3's rows
        table = {"t6": "6", "t5": "5"}.get(job["init"][:2], "3")
        assert job["experiment"] == f"msgfm-table{table}", job["init"]
    assert {job["experiment"] for job in configs} == {f"msgfm-table{t}" for t in "356"}
    best = next(c for c in configs if c["init"] == "t6_moe_cross50")
    # As the pretraining run of its encoder tags itself (no teacher, all sensors: no tag).
    assert best["tags"] == {"table": "6", "moe": "True", "cross_rate": "0.5", "objective": "mim"}


def test_a_cluster_run_on_sqlite_is_refused_while_planning(tmp_path: Path) -> None:
    """`snakemake --profile slurm -n`: refused before any job exists, planned with a server."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable, "-m", "snakemake", "-n", "--profile", "slurm",
        "--configfile", "config/demo.yaml",
        "--config", f"results_root={tmp_path}", f"data_root={tmp_path}/data",
    ]  # fmt: skip

    def plan(*config: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command + list(config), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )

    refused = plan()
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    sqlite = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert f"tracking_uri: {sqlite} is an SQLite file" in output, output[-3000:]
    assert "mlflow server --host" in output and "Job stats" not in output
    planned = plan("tracking_uri=http://127.0.0.1:5999")  # -n: no server needed
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    assert "rule pretrain:" in planned.stdout
    assert not (tmp_path / "mlflow.db").exists()
