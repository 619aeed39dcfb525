"""The training launcher's decisions: the srun geometry, refusals, and self-requeue's limit.

The processes it starts are tested end to end elsewhere: one node and two "nodes" in
tests/test_pretrain.py, the whole launcher under a real SLURM in tests/test_slurm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from msgfm.train.launch import (
    Layout,
    rendezvous_port,
    requeue_self,
    single_node_rendezvous,
    srun_command,
    torchrun_command,
)


def test_one_srun_task_per_node_holds_the_nodes_gpus_and_meets_on_the_first() -> None:
    env = {"SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "64"}
    verb = ["--threads", "64", "pretrain", "--out", "x"]
    command = srun_command(Layout(2, 8), 300, 3, "gpu01:33742", env, verb)
    assert command[:9] == [
        "srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
        "--gpus-per-node=8", "--mem=0", "--kill-on-bad-exit=1", "--cpus-per-task=64",
    ]  # fmt: skip
    task = command[command.index("launch") + 1 :]
    assert task[:2] == ["--node-task", "--nodes"]
    assert task[task.index("--rendezvous") + 1] == "gpu01:33742"
    assert task[task.index("--rdzv-id") + 1] == "4242"
    assert task[task.index("--") + 1 :] == verb
    # every node computes the same port from the job id, inside torchrun's usual range
    assert rendezvous_port("4242") == rendezvous_port("4242") == 29500 + 4242


def test_torchrun_waits_the_signal_lead_and_forwards_the_time_limit_warning() -> None:
    options, env = single_node_rendezvous("/tmp/job")
    command = torchrun_command(Layout(1, 8), 300, options, ["pretrain"], "/tmp/job/logs")
    assert command[command.index("--shutdown-timeout") + 1] == "300"
    assert "SIGURG" in command[command.index("--signals-to-handle") + 1].split(",")
    assert command[command.index("--nproc-per-node") + 1] == "8"
    assert command[command.index("--log-dir") + 1] == "/tmp/job/logs"
    # one node: file stores and loopback only, no TCP store on the node's network
    assert command[command.index("--rdzv-endpoint") + 1] == "/tmp/job/rendezvous"
    assert env["MSGFM_DIST_INIT"] == "file:///tmp/job/process-group"
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"


def test_several_nodes_without_slurm_or_a_rendezvous_are_refused() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(
        [sys.executable, "-m", "msgfm", "launch", "--nodes", "2", "--", "pretrain"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "2 nodes need a SLURM allocation, or --rendezvous HOST:PORT" in result.stderr


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An scontrol on PATH that reports Restarts=$RESTARTS and records requeue calls."""
    calls = tmp_path / "calls"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'if [ "$1" = show ]; then echo "JobId=$3 JobState=RUNNING Restarts=$RESTARTS"; fi\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.mark.parametrize(("restarts", "requeued"), [(0, True), (2, True), (3, False)])
def test_a_warned_job_requeues_itself_up_to_its_limit(
    fake_scontrol: Path, monkeypatch: pytest.MonkeyPatch, restarts: int, requeued: bool
) -> None:
    monkeypatch.setenv("RESTARTS", str(restarts))
    requeue_self({"SLURM_JOB_ID": "77"}, limit=3)
    calls = fake_scontrol.read_text().splitlines()
    assert calls[0] == "show job 77"
    assert ("requeue 77" in calls) == requeued
