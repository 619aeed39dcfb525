"""`snakemake --profile slurm` against a real one-node SLURM cluster on this machine.

workflow/scripts/slurm_localhost.sh installs (when missing) and starts munged, slurmctld and
slurmd with a node that declares GPUs, so the profile's GPU requests go through sbatch for real.
The profile is used literally (`--profile slurm` from the repository root) and a second profile
layered on top only shrinks its sizes to this node. The demo DAG runs whole, from generated data
to Tables 3, 5 and 6, with less finetuning (tests/slurm_demo.yaml); two pretraining jobs are
interrupted on the way. Skipped, with the reason, where SLURM cannot run (not root, no apt-get).
Afterwards the script's ``remove`` leaves the machine as the test found it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
import yte

from msgfm.config_files import load_config
from msgfm.plan import TABLE_NAMES
from msgfm.tables.paper import TABLES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow" / "scripts" / "slurm_localhost.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.v9+.yaml"
CONFIGS = ("config/demo.yaml", "tests/slurm_demo.yaml")
# Two pretraining jobs of two processes each (tests/slurm_demo.yaml) run side by side.
NODE_GPUS = 4
# The signal lead must stay below the demo's 10-minute runtimes, or jobs are warned at once.
TEST_SIGNAL_LEAD_S = 60
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "OMP_NUM_THREADS": "1",
    "MSGFM_SLURM_GPUS": str(NODE_GPUS),
}
# t6_moe_cross50 is the encoder the finetuning cells start from: the tables are built on
# resumed weights. The other two are pretrained only to be interrupted: TERM (a cancelled or
# preempted job: exits 75, Snakemake resubmits it) and URG (the time-limit warning: the job
# requeues itself). Every pretraining job runs two processes (torchrun, gloo).
INTERRUPTED = {"t6_dense_self": "term", "t6_moe_cross50": "requeue", "t6_moe_self": "warn"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root: installs slurm-wlm and starts SLURM's daemons",
    ),
]


def slurm_cmd(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The cluster for this module; afterwards the machine as the test found it (the script's
    remove): a slurm.conf naming a stopped controller, or SLURM's tools alone, would make every
    later Snakemake start wait ~9 s in the SLURM plugin's `scontrol show config`."""
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=ENV, capture_output=True, text=True, timeout=600
    )
    try:
        if started.returncode == 3:
            pytest.skip(f"SLURM cannot be installed here: {started.stderr.strip()}")
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        removed = subprocess.run(
            ["bash", str(SCRIPT), "remove"], env=ENV, capture_output=True, text=True, timeout=300
        )
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not job_processes_left(), job_processes_left()


def job_processes_left() -> list[str]:
    """Command lines of processes still carrying this cluster's name in their environment:
    jobs that escaped SLURM's parent-id tracking (the script's remove kills them)."""
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if b"\0SLURM_CLUSTER_NAME=msgfm-localhost\0" in b"\0" + environ.read_bytes():
                left.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return left


def tiny_profile(folder: Path) -> Path:
    """The slurm profile's per-rule resources sized to this node, plus status polling by squeue.

    Layered after `--profile slurm`: Snakemake replaces top-level keys, so set-resources is
    derived from the real profile rather than restated.
    """
    real = yte.process_yaml(PROFILE.read_text(), require_use_yte=True)
    per_rule = {}
    for rule, resources in real["set-resources"].items():
        shrunk = {**resources, "cpus_per_task": 1, "signal_lead": TEST_SIGNAL_LEAD_S}
        flags = re.sub(r"@\d+", f"@{TEST_SIGNAL_LEAD_S}", resources.get("slurm_extra", ""))
        flags = flags.strip("'").split()
        if rule == "finetune":
            # Two CPUs run the queue first come, first served: random-init cells, ready early,
            # would otherwise hold up the pretraining that the other cells wait for.
            flags.append("--nice=100")
        if flags:
            shrunk["slurm_extra"] = f"'{' '.join(flags)}'"
        per_rule[rule] = shrunk
    profile = {
        "set-resources": per_rule,
        "default-resources": {**real["default-resources"], "mem_mb": 1000},
        # Accounting is off on this cluster (MinJobAge keeps finished jobs in squeue).
        "slurm-status-command": "squeue",
        # The plugin waits this long after a job finishes, then 10 s longer each round in which
        # none does: with jobs of seconds, what is left is mostly these waits.
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "slurm-keep-successful-logs": True,
        "latency-wait": 5,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def snakemake_command(overrides: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--profile", "slurm", "--profile", str(overrides),
        "--configfile", *CONFIGS,
        "--config", f"results_root={results}", f"data_root={results}/data", *extra,
    ]  # fmt: skip


def resolved_config() -> dict:
    """The workflow config the test runs with: config.yaml, then CONFIGS."""
    return load_config(REPO / path for path in ("config/config.yaml", *CONFIGS))


def jobs_of_run(output: str) -> dict[str, dict[str, str]]:
    """scontrol's view of every job a Snakemake run submitted, by SLURM job id."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    assert run_id, output[-2000:]
    listing = slurm_cmd("squeue", "--states=all", "--noheader", "--format=%i", "--name", run_id[1])
    jobs = {}
    for job_id in listing.split():
        fields = slurm_cmd("scontrol", "show", "job", job_id).split()
        jobs[job_id] = dict(f.split("=", 1) for f in fields if "=" in f)
    return jobs


def print_timings(jobs: dict[str, dict[str, str]]) -> None:
    """Where the run's time went (pytest -s): each job's start and length as SLURM saw them (a
    requeued job's last run)."""
    times = {
        job_id: [datetime.fromisoformat(job[key]).timestamp() for key in ("StartTime", "EndTime")]
        for job_id, job in jobs.items()
    }
    first = min(start for start, _ in times.values())
    for job_id, (start, end) in sorted(times.items(), key=lambda item: item[1]):
        name = jobs[job_id]["Comment"].removeprefix("rule_")
        print(
            f"  {start - first:5.0f} s +{end - start:4.0f} s  {jobs[job_id]['JobState']:9s} {name}"
        )
    busy = sum(end - start for start, end in times.values())
    span = max(end for _, end in times.values()) - first
    print(f"  jobs: {len(jobs)}, job seconds {busy:.0f} over a span of {span:.0f} s")


def running_job(variant: str) -> str | None:
    """SLURM id of the variant's running pretraining job (the plugin puts the rule in --comment)."""
    listing = slurm_cmd("squeue", "--noheader", "--states=RUNNING", "--format=%i|%k")
    for line in listing.splitlines():
        job_id, comment = line.split("|", 1)
        if comment == f"rule_pretrain_wildcards_{variant}":
            return job_id
    return None


def release_requeued(job_id: str) -> None:
    """SLURM holds a requeued job back for two minutes (BeginTime); let it start at once."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = slurm_cmd("squeue", "--noheader", "--format=%T|%r", "--jobs", job_id).strip()
        if state == "PENDING|BeginTime":
            slurm_cmd("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            return
        time.sleep(0.2)
    raise AssertionError(f"requeued job {job_id} never came back as pending ({state})")


def interrupt_while_training(results: Path, run: subprocess.Popen[str]) -> dict[str, str]:
    """Interrupt each variant in INTERRUPTED once its job has logged a training step."""
    done: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while len(done) < len(INTERRUPTED) and run.poll() is None and time.monotonic() < deadline:
        for variant, how in INTERRUPTED.items():
            log = results / "logs" / "pretrain" / f"{variant}.log"
            if variant in done or not log.is_file() or " step " not in log.read_text():
                continue
            job_id = running_job(variant)
            if job_id is None:
                continue
            if how == "term":
                # What SLURM sends on preemption and cancellation, to every step's processes.
                slurm_cmd("scancel", "--signal=TERM", job_id)
            elif how == "warn":
                # What SLURM sends before the time limit (the profile's slurm_extra).
                slurm_cmd("scancel", "--signal=URG", job_id)
                release_requeued(job_id)
            else:
                slurm_cmd("scontrol", "requeue", job_id)
                release_requeued(job_id)
            done[variant] = job_id
        time.sleep(0.05)
    missing = set(INTERRUPTED) - set(done)
    assert not missing, f"never caught training, so never interrupted: {sorted(missing)}"
    return done


@pytest.fixture(scope="module")
def interrupted_run(
    cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, dict[str, str]]:
    """The demo DAG through SLURM to the tables, with two pretraining jobs interrupted mid-run."""
    base = tmp_path_factory.mktemp("slurm")
    results = base / "results"
    targets = [
        *(results / "tables" / f"{name}.md" for name in TABLE_NAMES),
        *(results / "pretrain" / variant / "encoder.pt" for variant in INTERRUPTED),
    ]
    command = snakemake_command(tiny_profile(base / "profile"), results, "--", *map(str, targets))
    started = time.monotonic()
    with (
        (base / "snakemake.log").open("w+") as log,
        subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True
        ) as run,
    ):
        try:
            job_ids = interrupt_while_training(results, run)
            run.wait(timeout=900)
        finally:
            run.kill()
        log.seek(0)
        output = log.read()
    print(f"demo DAG through SLURM: {time.monotonic() - started:.0f} s")
    assert run.returncode == 0, output[-5000:]
    return results, output, job_ids


def test_demo_dag_runs_through_the_slurm_profile(
    interrupted_run: tuple[Path, str, dict[str, str]],
) -> None:
    _, output, job_ids = interrupted_run
    jobs = jobs_of_run(output)
    print_timings(jobs)
    # Every job of the DAG but the local rules' went through sbatch (a resubmitted job has its
    # rule and wildcards in the comment again), the chain from the generated data to the last
    # finetuning cell among them.
    planned = re.search(r"^total\s+(\d+)$", output, re.MULTILINE)
    assert planned, output[-2000:]
    submitted = {job["Comment"] for job in jobs.values()}
    local = re.findall(r"^localrule (\w+):$", output, re.MULTILINE)
    assert {"finetune_subset", "tables"} <= set(local), local  # seconds of CPU: never queued
    assert len(submitted) == int(planned[1]) - len(local), sorted(submitted)
    rules = {comment.split("_wildcards_")[0] for comment in submitted}
    assert {"rule_make_demo_data", "rule_tile_pretrain", "rule_tile_downstream", "rule_pretrain",
            "rule_finetune"} <= rules  # fmt: skip
    assert not {f"rule_{rule}" for rule in local} & rules
    # The TERM-ed job failed (its training exited 75) and was resubmitted; the requeued one
    # and the one warned of its time limit (it requeued itself: never counted as failed) ran
    # twice under their own ids. Everything else went through once.
    failed = {job_id for job_id, job in jobs.items() if job["JobState"] != "COMPLETED"}
    assert failed == {job_ids["t6_dense_self"]}, {j: jobs[j]["JobState"] for j in failed}
    for variant in ("t6_moe_cross50", "t6_moe_self"):  # t6_moe_self was only sent SIGURG
        assert jobs[job_ids[variant]]["Restarts"] == "1", variant
    for job in jobs.values():
        # One node, one task holding its GPUs; torchrun starts one process per GPU.
        if job["Comment"].startswith("rule_pretrain_wildcards_"):
            assert job["TresPerJob"] == "gres:gpu:2" and job["NumTasks"] == "1", job
            assert job["NumNodes"] == "1", job
        if job["Comment"].startswith("rule_finetune_wildcards_"):
            assert job["TresPerJob"] == "gres:gpu:1" and job["NumTasks"] == "1", job


def expected_cells() -> dict[tuple[str, str, float], int]:
    """(init, task, fraction) -> seeds, for every cell the test config's grids run."""
    settings = resolved_config()["finetune"]
    cells = {}
    for name in settings["run"]:
        grid = settings["grids"][name]
        for init in grid["inits"]:
            for task, fractions in grid["tasks"].items():
                for fraction in fractions:
                    cells[init, task, float(fraction)] = len(grid["seeds"] or settings["seeds"])
    return cells


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_tables_show_every_cell_the_grids_ran(
    interrupted_run: tuple[Path, str, dict[str, str]], name: str
) -> None:
    """A cell holds our number exactly where the configured grids ran its init, task and
    fraction, over all their seeds; the paper's value stands beside it."""
    results = interrupted_run[0]
    for ext in ("csv", "md", "tex"):
        assert (results / "tables" / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    cells = expected_cells()
    lines = pd.read_csv(results / "tables" / f"{name}.csv")
    lines = lines[lines["table"] == name].set_index(["init", "column"])
    filled = 0
    for row in TABLES[name].rows:
        for column in TABLES[name].columns if row.init else ():
            ran = [
                seeds
                for (init, task, fraction), seeds in cells.items()
                if (init, task) == (row.init, column.task)
                and (column.fraction is None or abs(fraction - column.fraction) < 1e-9)
            ]
            line = lines.loc[(row.init, column.label)]
            where = f"{name}: {row.label!r} x {column.label!r}"
            if ran:
                assert line["seeds"] in ran, where
                assert math.isfinite(line["ours_mean"]) and math.isfinite(line["paper"]), where
                filled += 1
            else:
                assert line["seeds"] == 0, where
    assert filled, f"{name}: none of the configured grids' cells is in this table"
    assert "nan" not in (results / "tables" / f"{name}.md").read_text().lower()


@pytest.fixture(scope="module")
def reference_encoders(interrupted_run: tuple[Path, str, dict[str, str]]) -> Path:
    """The interrupted variants pretrained again locally, uninterrupted, on a copy of the
    shards (one Snakemake run for both)."""
    results = interrupted_run[0]
    reference = results.parent / "reference"
    for part in ("data", "shards"):
        shutil.copytree(results / part, reference / part)
    local = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", *CONFIGS,
            "--config", f"results_root={reference}", f"data_root={reference}/data",
            "--", *(str(reference / "pretrain" / v / "encoder.pt") for v in INTERRUPTED),
        ],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    return reference


@pytest.mark.parametrize("variant", sorted(INTERRUPTED))
def test_interrupted_pretraining_resumes_to_the_same_weights(
    interrupted_run: tuple[Path, str, dict[str, str]], reference_encoders: Path, variant: str
) -> None:
    results, _, job_ids = interrupted_run
    resumed_at = re.search(
        r"resuming at epoch (\d+) step (\d+)",
        (results / "logs" / "pretrain" / f"{variant}.log").read_text(),
    )
    assert resumed_at, f"{variant} (SLURM job {job_ids[variant]}) restarted from scratch"
    assert (int(resumed_at[1]), int(resumed_at[2])) != (0, 0)
    got = torch.load(results / "pretrain" / variant / "encoder.pt", map_location="cpu")
    want = torch.load(reference_encoders / "pretrain" / variant / "encoder.pt", map_location="cpu")
    assert_same_tensors(got, want)


def assert_same_tensors(got: object, want: object, where: str = "encoder") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same_tensors(got[key], want[key], f"{where}.{key}")


def test_a_multi_gpu_job_runs_its_command_once(cluster: None, tmp_path: Path) -> None:
    """With N GPUs on a node the plugin asks for one task holding them: the rule's launcher
    (torchrun) starts the N processes.

    Releases before 2.7.1 asked for one task per GPU, and srun ran the whole job N times.
    """
    (tmp_path / "Snakefile").write_text(
        "rule pretrain:\n"
        "    output: 'launches.txt'\n"
        f"    resources: runtime=5, nodes=1, gpu={NODE_GPUS}\n"
        "    shell: 'echo $SLURM_JOB_ID >> {output}'\n"
    )
    overrides = tiny_profile(tmp_path / "profile")
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "--profile", "slurm", "--profile", str(overrides),
            "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path),
        ],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (job_id,) = (tmp_path / "launches.txt").read_text().split()
    job = jobs_of_run(result.stdout + result.stderr)[job_id]
    assert job["TresPerJob"] == f"gres:gpu:{NODE_GPUS}" and job["NumTasks"] == "1", job
