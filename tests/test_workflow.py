"""The Snakemake workflow itself: config validation, lint, and the demo DAG end to end."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from demo_jobs import demo_config

from msgfm import plan

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Jobs call `python -m msgfm`: run them with this interpreter, as an activated venv would.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(
    *args: str, cwd: Path = REPO, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    """Run Snakemake in its own process group, so a timeout also ends the jobs it started."""
    proc = subprocess.Popen(
        [*SNAKEMAKE, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"snakemake {' '.join(args)} ran over {timeout} s:\n{stdout[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_invalid_config_fails_before_any_job_and_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  tile: large\n")
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "tile" in output and "large" in output
    assert "is not of type 'integer'" in output
    assert "rule " not in result.stdout  # no job was scheduled


def test_unknown_config_key_is_rejected_naming_it_not_the_schema(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tilling:\n  tile: 64\n")
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "'tilling' was unexpected" in output
    assert len(output.splitlines()) < 10, output[:3000]  # not the whole schema


# Mistakes the schema cannot see, each with the words its one-line error must hold: the key
# and what was expected.
PLANNED_MISTAKES = {
    "model-key": ({"model": {"embed_dimm": 64}}, ["model.embed_dimm", "embed_dim"]),
    "model-img-size": ({"model": {"img_size": 200}}, ["model.img_size 200", "stride 32"]),
    "pretrain-img-size": ({"model": {"img_size": 384}}, ["model.img_size 384", "tiling.tile 192"]),
    "finetune-img-size": (
        {"finetune": {"tasks": {"bigearthnet": {"img_size": 200}}}},
        ["finetune.tasks.bigearthnet.img_size 200", "multiple of stride × window = 192"],
    ),
    "mdas-resize": (
        {"tiling": {"tile": 192, "mdas_resize": 96}},
        ["tiling.mdas_resize 96", "multiple of tiling.tile 192"],
    ),
    "empty-data-root": ({"data_root": ""}, ["data_root", "non-empty"]),
    "tiler-option": (
        {"tiling": {"downstream": {"spacenet2": {"crop": 3}}}},
        ["tiling.downstream.spacenet2", "unknown option 'crop'", "mul_size, pan_size"],
    ),
}


@pytest.mark.parametrize(("settings", "words"), PLANNED_MISTAKES.values(), ids=PLANNED_MISTAKES)
def test_config_mistakes_stop_the_plan_in_one_line(
    tmp_path: Path, settings: dict, words: list[str]
) -> None:
    """Caught by ``snakemake -n`` before any job runs, not hours later in a job."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(settings))
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert any(all(word in line for word in words) for line in output.splitlines()), output
    assert "rule " not in result.stdout  # no job was scheduled


def test_paper_config_dry_run_plans_downloads_and_tiling() -> None:
    result = snakemake("-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    for rule in ("prepare_dataset", "tile_pretrain", "tile_downstream"):
        assert rule in result.stdout


def test_a_tasks_tiler_options_reach_its_job_as_one_json_argument(tmp_path: Path) -> None:
    """SpaceNet2's MUL side set in the config is what its tiling job receives."""
    settings = tmp_path / "mul.yaml"
    settings.write_text(yaml.safe_dump({"tiling": {"downstream": {"spacenet2": {"mul_size": 96}}}}))
    target = tmp_path / "shards" / "downstream" / "spacenet2"
    planned = snakemake(
        "-n", "-p", "--configfile", str(settings), "--config", f"results_root={tmp_path}",
        "--", str(target),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    command = next(line for line in planned.stdout.splitlines() if "tile-downstream" in line)
    words = shlex.split(command)
    assert json.loads(words[words.index("--options-json") + 1]) == {"mul_size": 96, "pan_size": 650}


# The demo's DAG, each training job one epoch (tests/demo_quick.yaml).
QUICK_DEMO = ("config/demo.yaml", "tests/demo_quick.yaml")


def demo_snakemake(results: Path, *args: str, configfiles: tuple[str, ...] = ()):
    """Snakemake on the quick demo (then ``configfiles``) writing under ``results``."""
    return snakemake(
        "--configfile", *QUICK_DEMO, *configfiles,
        "--config", f"results_root={results}", f"data_root={results}/data", *args,
    )  # fmt: skip


def test_the_quick_demo_runs_the_demos_jobs_only_shorter() -> None:
    """What the end-to-end test below runs is the demo's DAG: the same pretraining variants
    and finetuning cells, only fewer epochs (the only settings tests/demo_quick.yaml holds)."""
    from msgfm.config_files import load_config

    def leaves(tree: dict, prefix: str = "") -> set[str]:
        return {
            key
            for name, value in tree.items()
            for key in (
                leaves(value, f"{prefix}{name}.") if isinstance(value, dict) and value
                else {f"{prefix}{name}"}
            )
        }  # fmt: skip

    overlay = yaml.safe_load((REPO / QUICK_DEMO[1]).read_text())
    lengths = {"epochs", "warmup_epochs", "epochs_cap", "epochs_override"}
    assert all(lengths & set(key.split(".")) for key in leaves(overlay)), leaves(overlay)
    demo = load_config([REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml"])
    quick = load_config([REPO / "config" / "config.yaml", *(REPO / c for c in QUICK_DEMO)])
    assert plan.pretrain_variants(quick) == plan.pretrain_variants(demo)
    assert plan.finetune_cells(quick) == plan.finetune_cells(demo)
    assert len(plan.finetune_cells(demo)) > 20


def test_demo_dag_runs_end_to_end(tmp_path: Path) -> None:
    """The README's main job on a fresh results folder: demo data -> every shard set ->
    every variant and cell -> the tables, MLflow and the report."""
    results = tmp_path / "results"
    result = demo_snakemake(results, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for source in ("geopile", "millionaid", "sen12ms", "mdas"):
        meta = json.loads((results / "shards" / "pretrain" / source / "meta.json").read_text())
        assert (results / "shards" / "pretrain" / source / "index.parquet").is_file()
        assert meta, source
    for task in ("bigearthnet", "sen12ms_cr", "spacenet2", "vaihingen"):
        assert (results / "shards" / "downstream" / task / "index.parquet").is_file(), task
    table6 = (results / "tables" / "table6.md").read_text()
    assert "MoE ✓ cross ✓ 50%" in table6 and "(0.821, " in table6  # ours beside the paper (CR SSIM)
    for name in ("table3", "table5", "table6"):
        assert (results / "tables" / f"{name}.csv").is_file()
        assert (results / "tables" / f"{name}.tex").is_file()
    assert "finetune device-h" in table6 and "| Total" in table6  # what each row cost
    # Every row whose encoder the demo pretrains has numbers; Table 3's BigEarthNet cells
    # compare msGFM with random init over three seeds.
    pretrained = set(plan.pretrain_variants(demo_config()))
    for name in ("table3", "table5", "table6"):
        long = pd.read_csv(results / "tables" / f"{name}.csv")
        ours = long[long.init.isin(pretrained)].groupby("row").seeds.max()
        assert len(ours) and (ours > 0).all(), (name, ours.to_dict())
    table3 = pd.read_csv(results / "tables" / "table3.csv").set_index(["init", "column"])
    for init in ("t3_msgfm", "random"):
        for column in ("10% BEN mAP", "100% BEN mAP"):
            assert table3.loc[(init, column), "seeds"] == 3, (init, column)
    check_mlflow(results)
    # A second run has nothing to do: outputs are complete and trusted.
    plans_nothing(results)
    # A changed finetuning setting reruns exactly the cells it applies to (and the tables).
    changed = tmp_path / "vaihingen_epochs.yaml"
    changed.write_text(
        "finetune:\n  tasks:\n    vaihingen:\n"
        "      {epochs: 3, batch_size: 4, lr: 3.0e-4, weight_decay: 0.05}\n"
    )
    planned = demo_snakemake(results, "-n", configfiles=(str(changed),))
    log = planned.stdout + planned.stderr
    outputs = re.findall(r"output: (\S+/finetune/\S+/metrics\.json)", log)
    assert len(outputs) == 2 and all("/vaihingen/" in o for o in outputs), log[-3000:]
    assert "Params have changed" in log
    # The HTML report carries the tables and one summary image per pretrained variant.
    report = tmp_path / "report.html"
    made = demo_snakemake(results, "--report", str(report))
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    html = report.read_text()
    for name in ("table3", "table5", "table6"):
        assert f"{name}.md" in html and f"{name}.csv" in html, name
    assert "summary.png" in html and "t5_eva_clip" in html and "t6_moe_cross50" in html
    # Where the jobs write is not what they train: another MLflow store, or the results folder
    # moved elsewhere, plans nothing new.
    plans_nothing(results, "tracking_uri=http://127.0.0.1:5999")
    plans_nothing(shutil.move(results, tmp_path / "moved"))


def plans_nothing(results: Path, *settings: str) -> None:
    again = demo_snakemake(results, *settings, "-n")  # settings: more --config values
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "Nothing to be done" in log, log[-3000:]


def check_mlflow(results: Path) -> None:
    """After one invocation: its parent run finished and links every job's run; each table's
    experiment holds its finetuning runs and a run with the table's files."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{results}/mlflow.db")
    workflow = client.get_experiment_by_name("msgfm-workflow")
    (parent,) = client.search_runs([workflow.experiment_id])
    cells = list((results / "finetune").glob("*/*/*/frac*/seed*/metrics.json"))
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["runs/linked"] == parent.data.metrics["runs/finished"]
    assert parent.data.metrics["runs/linked"] >= len(cells) + 3  # jobs + three tables runs
    assert parent.data.metrics["cost/device_hours"] > 0
    assert "tables" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for name in ("table3", "table5", "table6"):
        experiment = client.get_experiment_by_name(f"msgfm-{name}")
        (tables,) = client.search_runs([experiment.experiment_id], "tags.stage = 'tables'")
        artifacts = {a.path for a in client.list_artifacts(tables.info.run_id)}
        assert {f"{name}.csv", f"{name}.md", f"{name}.tex"} <= artifacts
    for cell in cells:
        run = client.get_run(json.loads((cell.parent / "mlflow_run_id").read_text())["run_id"])
        assert run.data.tags["msgfm.workflow_run_id"] == parent.info.run_id
        init = run.data.tags["init"]  # t6_* -> Table 6's experiment; random: Table 3's
        table = init[1] if init[0] == "t" and init[1].isdigit() else "3"
        assert client.get_experiment(run.info.experiment_id).name == f"msgfm-table{table}"


@pytest.mark.parametrize("config", ["config/config.yaml", "config/demo.yaml"])
def test_lint_is_clean(config: str) -> None:
    result = snakemake("--lint", "--configfile", config)
    assert result.returncode == 0, result.stdout + result.stderr


# A path and a mirror a shell would split or run: spaces, quotes, ;, &, $().
HOSTILE = "odd dir; touch CANARY & $(touch CANARY) 'q\" x"


def test_config_values_reach_the_jobs_as_one_argument_each(tmp_path: Path) -> None:
    """Every path and outside value in a rule's shell command is quoted: a results folder
    with shell syntax in its name works (the demo data rule runs there for real), and a
    mirror URL is passed whole to the download step, never run."""
    root = tmp_path / HOSTILE
    settings = [f"results_root={root}", f"data_root={root}/data"]
    marker = root / "data" / "sen12ms" / ".msgfm-ready.json"
    # The demo data of two datasets (the rule writes those the config names): seconds, not 20.
    two_datasets = tmp_path / "two_datasets.yaml"
    two_datasets.write_text(
        "pretrain_sources: [sen12ms]\ndownstream_tasks: [sen12ms_cr]\nfinetune: {run: []}\n"
    )
    made = snakemake(
        "--cores", "1", "--configfile", "config/demo.yaml", str(two_datasets),
        "--config", *settings, "--", str(marker), cwd=REPO,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert marker.is_file()
    mirror = f"https://user@mirror.example/{HOSTILE}"
    real_data = tmp_path / "mirror.yaml"  # config.yaml's real downloads, from a mirror
    real_data.write_text(yaml.safe_dump({"data": {"mirror": mirror}}))
    planned = snakemake(
        "-n", "-p", "--configfile", str(real_data), "--config", *settings,
        "--", str(root / "data" / "sen12ms" / ".msgfm-ready.json"),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    command = next(line for line in planned.stdout.splitlines() if "msgfm prepare sen12ms" in line)
    words = shlex.split(command)
    assert words[words.index("--mirror") + 1] == mirror
    assert words[words.index("--data-root") + 1] == f"{root}/data"
    assert not list(tmp_path.rglob("CANARY")) and not (REPO / "CANARY").exists()
