"""Files that appear whole or not at all, and the partial files of writers that were killed.

Every output is written to ``.<name>.tmp-<pid>`` next to it and renamed onto its name
(``os.replace`` is atomic within a file system), so a reader, a resumed job or Snakemake's
output check sees the old file or the new one, never half of one. A SIGKILL (SLURM's
preemption, the out-of-memory killer) runs no cleanup and leaves the partial file behind, as
large as the output; the writer's process id in its name tells a later writer of the same
output whether that writer is gone, and then the file is removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through: renamed onto ``path`` when the block ends
    without an error, deleted otherwise. Makes the parent folder and first removes the partial
    files that dead writers left for ``path`` (one listing of the folder). Writers that pick a
    format by suffix (matplotlib) must be told the format: the temporary name ends in the pid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Indented JSON; values JSON does not know (paths, dates) are written as strings."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def remove_stale_temp_files(path: Path) -> None:
    """Delete the partial ``.<name>.tmp-<pid>`` files of ``path`` whose writer is dead.

    A process id alive on this machine keeps its file (it may be writing it); on a cluster a
    file of another node's process that happens to share the id waits for a later writer.
    """
    for tmp in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by process %s that is gone", tmp, pid)
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
