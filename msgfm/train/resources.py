"""A training process's share of its node: open files and CPUs.

Imported by ``msgfm.cli`` before torch is, so it must not import torch itself.
"""

from __future__ import annotations

import os
import resource
from typing import NamedTuple


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the new limit.

    Why: every open shard memory map holds a file descriptor (msgfm.data.shards.OPEN_MAPS),
    and each DataLoader worker opens its own maps, pipes and shared-memory handles. Cluster
    nodes usually start jobs at a soft limit of 1024 under a much higher hard limit, which any
    process may raise itself to; the training verbs do so at start-up (msgfm.cli) so a
    paper-scale job does not die of "Too many open files" on one node and not another.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class CpuShare(NamedTuple):
    """One rank's CPUs: its process's OpenMP/torch threads and its DataLoader workers."""

    threads: int
    workers: int


def cpu_share(allocated: int, local_ranks: int = 1, workers: int = 0) -> CpuShare:
    """Split a job's ``allocated`` CPUs evenly over the ``local_ranks`` ranks of one node.

    Why: torchrun starts one process per GPU, and each used to run the job's whole --threads as
    OpenMP threads and then its ``workers`` DataLoader processes on top (8 ranks x (8 threads
    + 8 workers) on ``cpus_per_task: 64``), so they fought over the cores. Each rank now gets
    ``allocated // local_ranks`` CPUs (at least 1) as its threads, and at most one worker
    fewer than that: a worker is a single-threaded process (PyTorch sets its threads to 1),
    so the rank's own process and its workers never outnumber its CPUs. The threads span the
    whole share because a GPU rank's pool idles while its kernels run and the workers load
    the next batches; a CPU job that wants every CPU for the model sets ``num_workers: 0``.
    """
    threads = max(1, allocated // max(1, local_ranks))
    return CpuShare(threads, min(workers, threads - 1))


def rank_threads(job_threads: int | None) -> int | None:
    """This process's threads under torchrun: its :func:`cpu_share` of the job's CPUs.

    ``job_threads`` is the job's allocation (``--threads``, the rule's threads); without it
    the job has the CPUs this process may run on, unless the caller set ``OMP_NUM_THREADS``:
    then None, and that per-process choice stands (as on a machine shared with others).
    torchrun tells each rank how many ranks share the node in ``LOCAL_WORLD_SIZE``.
    """
    if not job_threads and "OMP_NUM_THREADS" in os.environ:
        return None
    allocated = job_threads or len(os.sched_getaffinity(0))
    return cpu_share(allocated, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))).threads
