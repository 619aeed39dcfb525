"""Starting a training job's processes: one per GPU, on one node or across a SLURM allocation.

Every training rule calls ``python -m msgfm launch --nodes N --gpus-per-node G -- <verb ...>``:

- **One node** (the paper's 8 GPUs): torchrun starts G processes right here, in the job step
  that the SLURM plugin created with the job's GPUs (``--gpus G --nodes 1``: the scheduler
  cannot split them over nodes). Its rendezvous and the process group meet through files in a
  private temporary folder and gloo/NCCL bind to loopback: nothing listens on the node's
  network (torchrun's ``--standalone`` store listens on every interface). One process needs no
  torchrun.
- **Several nodes**: the job asks for ``--nodes N --ntasks-per-node 1 --gres gpu:G`` and the
  launcher starts one task per node with ``srun --overlap --mem=0`` (a step sharing the CPUs,
  GPUs and memory of the step it starts from); each task is this module again
  (``--node-task``), running torchrun for its node's G processes, and all meet at a c10d store
  on the allocation's first node, at a port derived from the job id so every node computes the
  same endpoint.
- **Signals.** SLURM's signals and Ctrl-C reach every process of the step or terminal; each
  rank checkpoints at the end of its step and exits 75 (msgfm.train.preemption). torchrun
  forwards them too and waits ``--grace`` seconds for its workers (its own default, 30 s, is
  too short to write a Swin-B checkpoint to a shared filesystem) before killing them. The
  launcher exits 75 whenever it saw one of those signals, whatever torchrun's own status.
  Several nodes have one gap: srun ends its step at once on SIGTERM, so a multi-node job
  cancelled or preempted with SIGTERM keeps only its last periodic checkpoint (the time-limit
  warning, SIGURG, passes srun by).
- **Time limits.** The profile asks SLURM for SIGURG ``lead`` seconds before the time limit.
  A job warned that way checkpoints and requeues itself (``scontrol requeue``: same job id, a
  fresh time limit, resumed from the checkpoint), so a run longer than the partition's limit is
  a chain of jobs and none of them counts as failed. ``--requeues`` bounds the chain (the cost
  estimate sizes it, msgfm.cost.requeue_limit); a cancelled or preempted job (SIGTERM) is never
  requeued by the launcher: SLURM requeues preempted jobs itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from msgfm.errors import MsgfmError
from msgfm.train.preemption import EXIT_REQUEUE, SIGNALS, TIME_LIMIT_SIGNAL

log = logging.getLogger(__name__)

# torchrun handles these and forwards them to its workers (msgfm.train.preemption.SIGNALS).
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGURG,SIGUSR1"
# c10d store of a multi-node job: a port per job id, the same on every node of the allocation.
RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORT_SPAN = 29500, 10000
# What a nested srun may keep of the step it starts from; the rest (SLURM_NTASKS, SLURM_GPUS,
# ...) describes the outer one-task step and would override the new step's geometry.
SLURM_IDENTITY = frozenset(
    {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST"}
)


class LaunchError(MsgfmError):
    """The requested process layout cannot be started here."""


@dataclass(frozen=True)
class Layout:
    """Processes of one job: ``nodes`` × ``gpus_per_node`` ranks."""

    nodes: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def rendezvous_port(job_id: str) -> int:
    return RENDEZVOUS_PORT_BASE + int(job_id) % RENDEZVOUS_PORT_SPAN


def torchrun_command(
    layout: Layout, grace_s: int, rendezvous: Sequence[str], verb: Sequence[str], log_dir: str
) -> list[str]:
    """torchrun for one node's ``gpus_per_node`` processes, each running ``python -m msgfm``.

    ``log_dir``: torchrun's agent otherwise makes a ``/tmp/torchelastic_*`` folder per start and
    never removes it (thousands on a node after a few hundred jobs); the launcher owns and removes
    this one."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(layout.nodes), "--nproc-per-node", str(layout.gpus_per_node),
        "--max-restarts", "0", "--shutdown-timeout", str(grace_s),
        "--signals-to-handle", TORCHRUN_SIGNALS, "--log-dir", log_dir,
        *rendezvous, "-m", "msgfm", *verb,
    ]  # fmt: skip


def single_node_rendezvous(folder: str) -> tuple[list[str], dict[str, str]]:
    """torchrun options and environment for a rendezvous that never leaves the node: file
    stores in ``folder`` for torchrun and the process group, gloo and NCCL on loopback."""
    options = ["--rdzv-backend", "c10d", "--rdzv-endpoint", os.path.join(folder, "rendezvous"),
               "--rdzv-conf", "store_type=file", "--rdzv-id", "local"]  # fmt: skip
    env = {
        # msgfm.train.distributed initialises the process group from this file store
        "MSGFM_DIST_INIT": f"file://{os.path.join(folder, 'process-group')}",
        # without it the agent hosts a TCP store on every interface for its workers
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }
    return options, env


def multi_node_rendezvous(endpoint: str, run_id: str) -> list[str]:
    """torchrun options for a c10d store at ``endpoint`` (host:port) that every node joins."""
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id]


def slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields (NodeList, NumNodes, Restarts, ...): read from the
    controller, because the plugin's job step passes only the job id on in its environment."""
    fields = _run_text(["scontrol", "show", "job", job_id]).split()
    return dict(field.split("=", 1) for field in fields if "=" in field)


def slurm_hosts(nodelist: str) -> list[str]:
    """The host names of a SLURM node list (``gpu[01-02]``), first node first."""
    return _run_text(["scontrol", "show", "hostnames", nodelist]).split()


def srun_command(
    layout: Layout, grace_s: int, requeues: int, endpoint: str, env: Mapping[str, str],
    verb: Sequence[str],
) -> list[str]:  # fmt: skip
    """One task per node of the allocation, each the per-node launcher of this module."""
    command = [
        "srun", "--overlap", f"--nodes={layout.nodes}", f"--ntasks={layout.nodes}",
        "--ntasks-per-node=1", f"--gpus-per-node={layout.gpus_per_node}", "--mem=0",
        "--kill-on-bad-exit=1",
    ]  # fmt: skip
    if env.get("SLURM_CPUS_PER_TASK"):
        command.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    return [
        *command, sys.executable, "-m", "msgfm", "launch", "--node-task",
        "--nodes", str(layout.nodes), "--gpus-per-node", str(layout.gpus_per_node),
        "--grace", str(grace_s), "--requeues", str(requeues),
        "--rendezvous", endpoint, "--rdzv-id", env["SLURM_JOB_ID"], "--", *verb,
    ]  # fmt: skip


def launch(args: argparse.Namespace) -> int:
    """Start the job's processes (module docstring) and return the job's exit status."""
    layout = Layout(args.nodes, args.gpus_per_node)
    verb = args.verb[1:] if args.verb[:1] == ["--"] else list(args.verb)
    env = dict(os.environ)
    if layout.nodes > 1 and "SLURM_JOB_ID" in env and not args.node_task:
        job = slurm_job(env["SLURM_JOB_ID"])
        hosts = slurm_hosts(job["NodeList"])
        if len(hosts) != layout.nodes:
            raise LaunchError(
                f"the job runs on {layout.nodes} nodes (pretrain.nodes) but SLURM allocated "
                f"{len(hosts)} ({job['NodeList']}): set the node count in the workflow config, "
                "not in the profile"
            )
        endpoint = f"{hosts[0]}:{rendezvous_port(env['SLURM_JOB_ID'])}"
        inner = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_"))}
        inner.update({k: env[k] for k in SLURM_IDENTITY if k in env})
        command = srun_command(layout, args.grace, args.requeues, endpoint, env, verb)
        code, seen = run_watching_signals(command, inner)
    else:
        code, seen = run_node(layout, args.grace, args.rendezvous, args.rdzv_id, verb, env)
    warned = code == EXIT_REQUEUE and TIME_LIMIT_SIGNAL in seen
    if warned and "SLURM_JOB_ID" in env and not args.node_task:
        requeue_self(env, args.requeues)
    return code


def run_node(
    layout: Layout, grace_s: int, endpoint: str | None, run_id: str, verb: Sequence[str],
    env: dict[str, str],
) -> tuple[int, set[int]]:  # fmt: skip
    """This node's processes: a plain interpreter for one, torchrun for several."""
    if layout.world_size == 1:
        return run_watching_signals([sys.executable, "-m", "msgfm", *verb], env)
    if layout.nodes > 1 and not endpoint:
        raise LaunchError(
            f"{layout.nodes} nodes need a SLURM allocation, or --rendezvous HOST:PORT given "
            "to one launcher per node"
        )
    folder = tempfile.mkdtemp(prefix="msgfm-launch-")
    try:
        logs = os.path.join(folder, "torchrun-logs")
        if layout.nodes > 1:
            rendezvous, extra = multi_node_rendezvous(endpoint, run_id), {}
        else:
            rendezvous, extra = single_node_rendezvous(folder)
        command = torchrun_command(layout, grace_s, rendezvous, verb, logs)
        return run_watching_signals(command, {**env, **extra})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_watching_signals(command: Sequence[str], env: Mapping[str, str]) -> tuple[int, set[int]]:
    """Run ``command`` to its end: its exit status (75 if a preemption signal arrived meanwhile)
    and the signals that arrived.

    Signals are not forwarded: SLURM signals every process of the step and a terminal its whole
    process group, so the child got the signal too; a second copy would cut torchrun's
    graceful shutdown short.
    """
    seen: set[int] = set()

    def remember(signum: int, _frame: object) -> None:
        seen.add(signum)

    previous = {sig: signal.signal(sig, remember) for sig in SIGNALS}
    try:
        with subprocess.Popen(list(command), env=dict(env)) as child:
            code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if seen and code != 0:
        names = ", ".join(sorted(signal.Signals(s).name for s in seen))
        log.warning("stopped by %s (exit %d): exiting %d", names, code, EXIT_REQUEUE)
        return EXIT_REQUEUE, seen
    return code, seen


def requeue_self(env: Mapping[str, str], limit: int) -> None:
    """Put this SLURM job back in the queue after a time-limit warning, ``limit`` times at most
    (SLURM counts the job's restarts, preemptions included)."""
    job_id = env["SLURM_JOB_ID"]
    restarts = int(slurm_job(job_id)["Restarts"])
    if restarts >= limit:
        log.warning("job %s has restarted %d times, the limit: not requeued", job_id, restarts)
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
    else:
        log.info("requeued job %s (restart %d of at most %d)", job_id, restarts + 1, limit)


def _run_text(command: Sequence[str]) -> str:
    try:
        return subprocess.run(list(command), capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LaunchError(f"{' '.join(command)} failed: {exc}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="processes per node")
    parser.add_argument(
        "--grace", type=int, default=300,
        help="seconds torchrun waits for its workers to checkpoint after a signal",
    )  # fmt: skip
    parser.add_argument(
        "--requeues", type=int, default=0,
        help="times a SLURM job warned of its time limit (SIGURG) may requeue itself",
    )  # fmt: skip
    parser.add_argument("--rendezvous", default=None, help="HOST:PORT of a multi-node store")
    parser.add_argument("--rdzv-id", default="msgfm", help="the job's rendezvous id")
    parser.add_argument("--node-task", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("verb", nargs=argparse.REMAINDER, help="-- then the msgfm verb to run")
