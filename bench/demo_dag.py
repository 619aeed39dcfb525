"""Benchmark: the demo DAG from an empty results folder to all tables (target: <= 10 min).

Runs ``snakemake --cores all --configfile config/demo.yaml`` with ``results_root`` and
``data_root`` in an empty temporary folder (demo data generation, tiling, every pretraining
variant, every finetuning cell, tables, figures that are on), and prints:

- the wall time against the 10-minute target;
- the share of it spent outside training jobs: the time when no pretraining or finetuning
  job was running (Snakemake's start-up and scheduling, demo data, tiling, subsets, report
  summaries, tables). Training jobs are timed by their ``benchmark:`` files (results/
  benchmarks/): a job ran from the file's modification time minus its ``s`` column to the
  former; their union over the run is the time training was under way;
- how much of the training jobs' own time is the training loop (``device_hours`` in their
  metrics.json) rather than process start-up, imports, model building and evaluation;
- the same split in CPU time, which other processes on a shared machine do not inflate: the
  whole run's CPU seconds (Snakemake and every job: the children's rusage) against the
  training jobs' (the benchmark files' ``cpu_time``, sampled by Snakemake, so a lower bound),
  and the CPU seconds divided by the cores, the wall time an idle machine could not beat.

    .venv/bin/python bench/demo_dag.py            # 3-5 minutes on 2 cores
    .venv/bin/python bench/demo_dag.py --keep /tmp/demo-run

The LAST line is the wall time as a share of the 10-minute target.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 600.0
TRAINING = ("pretrain", "finetune", "finetune_sensors")  # benchmark folders of training rules


def training_jobs(results: Path) -> list[tuple[str, float, float, float | None, float]]:
    """(job, start, end, training-loop seconds or None, CPU seconds) per training job."""
    jobs = []
    for kind in TRAINING:
        for tsv in sorted((results / "benchmarks" / kind).rglob("*.tsv")):
            with tsv.open() as handle:
                row = next(csv.DictReader(handle, delimiter="\t"))
            end = tsv.stat().st_mtime
            cpu = float(row["cpu_time"]) if row.get("cpu_time", "NA") != "NA" else 0.0
            jobs.append((f"{kind}/{tsv.relative_to(results / 'benchmarks' / kind)}",
                         end - float(row["s"]), end, None, cpu))  # fmt: skip
    loops = {}
    for metrics in results.glob("pretrain/*/metrics.json"):
        loops[f"pretrain/{metrics.parent.name}.tsv"] = metrics
    for metrics in results.glob("finetune/*/*/*/frac*/seed*/metrics.json"):
        task, init, transfer, frac, seed = metrics.relative_to(results / "finetune").parts[:5]
        name = f"finetune/{task}/{init}_{transfer}_{frac}_{seed}.tsv"
        loops[name] = metrics
    out = []
    for name, start, end, _, cpu in jobs:
        path = loops.get(name)
        hours = json.loads(path.read_text()).get("device_hours") if path else None
        out.append((name, start, end, None if hours is None else 3600.0 * float(hours), cpu))
    return out


def covered(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by at least one interval."""
    total, reach = 0.0, lo
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            total += end - start
            reach = end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default="config/demo.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", type=Path, default=None, help="run here and keep the results")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="msgfm-demo-dag-"))
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"--keep {args.keep}: not empty; the benchmark starts from an empty folder")
    results = root / "results"
    overrides = root / "bench.yaml"
    root.mkdir(parents=True, exist_ok=True)
    overrides.write_text(
        json.dumps({"results_root": str(results), "data_root": str(root / "data")})
    )
    # Jobs call `python -m msgfm`: this interpreter's, as an activated venv would.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--quiet", "rules",
               "--configfile", args.configfile, str(overrides)]  # fmt: skip
    try:
        load_before = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        end = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run.returncode != 0:
            sys.exit(f"the demo DAG failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
        jobs = training_jobs(results)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    wall = end - start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    training_cpu = sum(job[4] for job in jobs)
    cores = os.cpu_count() if args.cores == "all" else int(args.cores)
    training = covered([(s, e) for _, s, e, _, _ in jobs], start, end)
    job_seconds = sum(e - s for _, s, e, _, _ in jobs)
    loops = [(e - s, loop) for _, s, e, loop, _ in jobs if loop is not None]
    output = run.stdout + run.stderr  # Snakemake logs to stderr
    print(output.split("Job stats:")[-1].strip().split("\n\n")[0])  # jobs per rule
    print(f"training jobs: {len(jobs)}, {job_seconds:.0f} job-seconds", end="")
    if loops:
        in_loop = sum(loop for _, loop in loops) / sum(total for total, _ in loops)
        print(f"; {100 * in_loop:.0f} % of their time is the training loop "
              f"(the rest: start-up, imports, model building, evaluation)")  # fmt: skip
    else:
        print()
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {cores} cores")
    print(f"CPU: {cpu:.0f} s in all, >= {training_cpu:.0f} s in training jobs, so <= "
          f"{100 * (1 - training_cpu / cpu):.0f} % outside them; {cpu / cores:.0f} s of CPU per "
          f"core (an idle machine's floor for the wall time)")  # fmt: skip
    print(f"outside training jobs: {wall - training:.0f} s = {100 * (1 - training / wall):.0f} %")
    print(f"demo DAG: {wall:.0f} s wall = {wall / TARGET_SECONDS:.2f} of the 10-minute target")


if __name__ == "__main__":
    main()
