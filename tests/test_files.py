"""Atomic writes and the removal of killed writers' partial files (msgfm.files)."""

from __future__ import annotations

import json
import subprocess

import pytest

from msgfm.files import atomic_path, write_json_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path) -> None:
    target = write_text_atomic(tmp_path / "metrics.json", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_json_atomic(tmp_path / "sub" / "metrics.json", {"path": tmp_path})
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text()) == {"path": str(tmp_path)}


def test_the_next_writer_removes_partial_files_of_dead_writers_only(tmp_path) -> None:
    """A SIGKILL runs no cleanup: ``.encoder.pt.tmp-<pid>`` stays until the next write."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])  # still writing its file
    try:
        stale = tmp_path / f".encoder.pt.tmp-{dead.pid}"
        writing = tmp_path / f".encoder.pt.tmp-{alive.pid}"
        other = tmp_path / f".metrics.json.tmp-{dead.pid}"  # another output's: not ours to judge
        for path in (stale, writing, other):
            path.write_bytes(b"half an output")
        write_text_atomic(tmp_path / "encoder.pt", "weights")
        assert not stale.exists() and writing.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()
