"""Benchmark: `snakemake -n` on the paper-scale config (target: >= 300 jobs in <= 10 s).

What the workflow adds is measured against Snakemake's own floor, in the same run: a dry run
of a one-rule Snakefile pays everything a dry run pays before our DAG exists (interpreter,
Snakemake and its plugins: the SLURM executor plugin alone imports pandas), so
``paper / floor`` is the share of the dry run that is ours (config validation, input
functions, params of every job, the DAG itself), and ``(paper - floor) / jobs`` its cost per
job. Runs alternate between the two, best of ``--repeat`` each, wall time and CPU time (user +
sys of the child; on a shared machine the wall time also measures the neighbours). The results
root is an empty temporary folder, so every job of the DAG is planned (nothing is up to date).

``--seeds`` adds a second DAG with more finetuning seeds than the paper config sets (more jobs
of the same kinds), to show how the time grows with the job count; it is a scaling check,
not the paper's DAG.

    .venv/bin/python bench/dry_run.py
    .venv/bin/python bench/dry_run.py --repeat 5 --seeds 5

The LAST line is the paper DAG: jobs, seconds, and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_JOBS, TARGET_SECONDS = 300, 10.0
FLOOR_SNAKEFILE = """rule only:
    output:
        "out.txt",
    log:
        "out.log",
    shell:
        "touch {output} > {log}"
"""


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, child CPU s, stdout) of one command; fails loudly if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def job_count(stdout: str) -> int:
    """The total of Snakemake's "Job stats" table."""
    totals = re.findall(r"^total\s+(\d+)\s*$", stdout, re.MULTILINE)
    if not totals:
        raise ValueError(f"no job total in the dry run's output:\n{stdout[-2000:]}")
    return int(totals[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best counts")
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--seeds", type=int, default=0, help="also a DAG with this many seeds")
    args = parser.parse_args()

    snakemake = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"]
    with tempfile.TemporaryDirectory(prefix="msgfm-dry-run-") as tmp:
        root = Path(tmp)
        (root / "floor").mkdir()
        (root / "floor" / "Snakefile").write_text(FLOOR_SNAKEFILE)
        empty = {"results_root": str(root / "results"), "data_root": str(root / "data")}
        overrides = root / "empty.yaml"
        overrides.write_text(json.dumps(empty))
        dags = {"paper": [overrides]}
        if args.seeds:
            more = root / "seeds.yaml"
            more.write_text(json.dumps({**empty, "finetune": {"seeds": list(range(args.seeds))}}))
            dags[f"paper, {args.seeds} seeds"] = [more]
        commands = {"floor": ([*snakemake, "--cores", "1"], root / "floor")}
        for name, extra in dags.items():
            configs = ["--configfile", args.configfile, *map(str, extra)]
            commands[name] = ([*snakemake, *configs], REPO)

        best: dict[str, tuple[float, float]] = {}
        jobs: dict[str, int] = {}
        for _ in range(args.repeat):
            for name, (command, cwd) in commands.items():
                wall, cpu, stdout = timed(command, cwd)
                jobs[name] = job_count(stdout)
                old = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(old[0], wall), min(old[1], cpu))

    floor_wall, floor_cpu = best["floor"]
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"floor (one-rule Snakefile): {floor_wall:.2f} s wall, {floor_cpu:.2f} s CPU")
    for name in reversed(list(dags)):  # the paper DAG last
        wall, cpu = best[name]
        per_job = 1000 * (wall - floor_wall) / jobs[name]
        print(
            f"{name}: {jobs[name]} jobs in {wall:.2f} s wall ({cpu:.2f} s CPU) = "
            f"{wall / floor_wall:.2f}x the floor, {per_job:.1f} ms per job over it "
            f"(<= {TARGET_SECONDS:g} s: {'yes' if wall <= TARGET_SECONDS else 'NO'}; "
            f">= {TARGET_JOBS} jobs: {'yes' if jobs[name] >= TARGET_JOBS else 'no'})"
        )


if __name__ == "__main__":
    main()
