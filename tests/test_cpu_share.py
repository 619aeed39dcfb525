"""CPUs of a training job split over torchrun's local ranks: threads and DataLoader workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from msgfm.train.distributed import DistContext
from msgfm.train.resources import CpuShare, cpu_share, rank_threads
from msgfm.train.runner import make_loader

# `python -m msgfm` whose make-demo verb reports the threads the process ended up with.
PROBE = """
import os
import sys

import msgfm.cli as cli


def report(args):
    import torch

    return f"{torch.get_num_threads()} {os.environ['OMP_NUM_THREADS']}"


cli._make_demo = report
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("allocated", "local_ranks", "workers", "share"),
    [
        (64, 8, 8, CpuShare(8, 7)),  # the paper's pretraining job: 8 GPUs, cpus_per_task 64
        (8, 1, 8, CpuShare(8, 7)),  # one finetuning rank with its 8 CPUs
        (8, 4, 0, CpuShare(2, 0)),
        (10, 4, 1, CpuShare(2, 1)),  # the remainder stays idle; fewer workers asked than fit
        (8, 8, 8, CpuShare(1, 0)),  # a share of 1: the rank loads its own batches
        (2, 8, 2, CpuShare(1, 0)),  # fewer CPUs than ranks still leaves each rank a thread
    ],
)
def test_cpu_share_splits_the_job_over_its_local_ranks(allocated, local_ranks, workers, share):
    assert cpu_share(allocated, local_ranks, workers) == share


def test_rank_threads_divide_the_job_threads_or_the_affinity(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: --threads overrides
    assert rank_threads(8) == 2
    assert rank_threads(None) is None  # the caller's per-process choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert rank_threads(None) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert rank_threads(None) == 12


def test_cli_gives_each_of_four_local_ranks_two_of_eight_threads(tmp_path):
    env = {**os.environ, "LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", PROBE, "--threads", "8", "make-demo"]
    done = subprocess.run(
        [*command, "--data-root", str(tmp_path)], env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.split() == ["2", "2"]


def test_loader_workers_are_capped_to_the_rank_share(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # the share msgfm.cli set
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

    def workers(configured: int) -> int:
        loader = make_loader([0], [[0]], list, workers=configured, seed=0, ctx=ctx)
        return loader.num_workers

    assert (workers(8), workers(1), workers(0)) == (2, 1, 0)
