"""A training process's share of its node: open files."""

from __future__ import annotations

import resource


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
