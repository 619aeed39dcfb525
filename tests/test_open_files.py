"""Open files of a training process: shard maps stay bounded, and the soft limit is raised."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from msgfm.data.shards import OPEN_MAPS, ShardSet, ShardWriter

LIMIT = 2 * OPEN_MAPS  # a soft RLIMIT_NOFILE well under the set's shard files
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The input-statistics pass, then every row through two DataLoader workers in random order.
READ_ALL = """
import sys
from torch.utils.data import DataLoader
from msgfm.data import shards
from msgfm.data.loader import ShardDataset, to_tensor
from msgfm.data.statistics import role_statistics

if sys.argv[2] == "unbounded":
    shards.OPEN_MAPS = 10**9
shardset = shards.ShardSet(sys.argv[1])
role_statistics([shardset], "target", to_tensor)
dataset = ShardDataset(shardset, ["label", "target"])
loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2)
seen = sorted(int(value) for batch in loader for value in batch["label"][:, 0, 0])
assert seen == list(range(len(shardset))), seen
print("read", len(seen))
"""


def write_one_row_shards(root: Path, rows: int) -> None:
    """Two roles, one row per shard: ``2 * rows`` shard files; row i holds the value i."""
    writer = ShardWriter(root, rows_per_shard=1)
    for i in range(rows):
        arrays = {"label": np.full((4, 4), i, np.int32), "target": np.full((1, 4, 4), i, "f4")}
        writer.add(f"sample{i}", arrays, split="train", source="synthetic", origin=[])
    writer.close()


def open_files(root: Path) -> int:
    """This process's descriptors of files under ``root``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            count += os.readlink(fd).startswith(str(root))
    return count


def mappings(root: Path) -> int:
    """This process's memory mappings of files under ``root``."""
    return sum(str(root) in line for line in Path("/proc/self/maps").read_text().splitlines())


def lowered_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))


def read_all(root: Path, cache: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", READ_ALL, str(root), cache], env=ENV, preexec_fn=lowered_limit,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_evicted_maps_close_their_files_but_arrays_handed_out_stay_valid(tmp_path):
    write_one_row_shards(tmp_path, 3 * OPEN_MAPS)
    shards = ShardSet(tmp_path)
    kept = shards.get(0)["target"]
    for i in range(len(shards)):
        shards.get(i)
    # Each open map holds one descriptor and one mapping: the cache's, plus the one behind kept.
    assert open_files(tmp_path) == mappings(tmp_path) == OPEN_MAPS + 1
    assert np.all(kept == 0)
    del kept
    assert open_files(tmp_path) == mappings(tmp_path) == OPEN_MAPS
    del shards
    assert open_files(tmp_path) == mappings(tmp_path) == 0


def test_statistics_and_loader_workers_read_more_shards_than_open_files_allowed(tmp_path):
    write_one_row_shards(tmp_path, 3 * OPEN_MAPS)  # 6 x OPEN_MAPS shard files, 3 x LIMIT
    bounded = read_all(tmp_path, "bounded")
    assert bounded.returncode == 0, bounded.stderr[-3000:]
    assert f"read {3 * OPEN_MAPS}" in bounded.stdout
    # The check can fail: caching every map exhausts the same limit.
    unbounded = read_all(tmp_path, "unbounded")
    assert unbounded.returncode != 0 and "Too many open files" in unbounded.stderr


def test_training_raises_the_soft_open_file_limit_to_the_hard_one():
    probe = (  # what the pretrain and finetune verbs do first
        "import resource\n"
        "from msgfm.cli import _prepare_training_process\n"
        "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "_prepare_training_process()\n"
        "print(before, *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=ENV, preexec_fn=lowered_limit, capture_output=True,
        text=True, check=True, timeout=60,
    )  # fmt: skip
    before, soft, hard = map(int, done.stdout.split())
    assert before == LIMIT < hard
    assert soft == hard
