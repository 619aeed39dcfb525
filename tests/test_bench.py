"""bench/gpu_step.py runs end to end on a CPU with the demo preset (no timing is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_bench_runs_on_cpu_and_ends_with_a_ratio() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "bench/gpu_step.py", "--preset", "demo", "--steps", "2", "--warmup",
         "1", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    ratio = re.fullmatch(r".* ([0-9.]+)x", lines[-1])
    assert ratio and float(ratio.group(1)) > 0, lines[-1]
    flops = next(line for line in lines if line.startswith("flops per step:"))
    ours, timm = re.fullmatch(r"flops per step: msgfm (\S+), timm (\S+)", flops).groups()
    assert float(ours) > 0 and float(timm) > 0
    assert any(line.startswith("msgfm:") and "samples/s per GPU" in line for line in lines)
