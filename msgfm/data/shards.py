"""Memory-mappable shard sets: the on-disk format between tiling and training.

Decoding thousands of small compressed GeoTIFFs per step starves a GPU, so every dataset is
tiled once into a shard set that training opens with ``np.load(mmap_mode="r")`` (zero-copy):

    <out_dir>/<role>-<shard:05d>.npy   rows of one role (rgb, s2, sar, dsm, label, target, ...),
                                       shape (rows, *sample_shape), raw storage dtype
    <out_dir>/index.parquet            one row per sample: sample_id, shard, row, split,
                                       source, origin (source file paths), task columns
    <out_dir>/meta.json                roles (dtype, sample shape, band names), valid_bands,
                                       counts and the tiling report

All roles of a sample share its (shard, row), so paired sensors cannot come apart. Every file
is written under a temporary name and renamed when complete; the index and meta are renamed
last, so a killed job leaves no index and nothing a later run trusts. A new writer on the same
folder first deletes the old index/meta (the set is no longer "finished") and any stale
temporaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from msgfm.errors import DataError
from msgfm.files import TEMP_MARK, atomic_path, temp_path, write_json_atomic

INDEX_NAME = "index.parquet"
META_NAME = "meta.json"
FORMAT_VERSION = 1
BASE_COLUMNS = ("sample_id", "shard", "row", "split", "source", "origin")
_SHARD_NAME = re.compile(r"[A-Za-z0-9_]+-\d{5}\.npy")
OPEN_MAPS = 64
"""Most shard memory maps one :class:`ShardSet` keeps open (least recently used go first).

Why: CPython's mmap holds a duplicate of the file's descriptor for as long as the map lives
(measured: one fd and one /proc/self/maps entry per open shard), and MillionAID alone is
about a thousand 1024-row shards per role. Caching them all exhausts the 1024 open files most
cluster nodes allow a process, in the main process (input statistics) and in each DataLoader
worker. Reopening an evicted shard costs about 0.1 ms, far less than preparing a tile; 64 maps
hold every role of a dozen shards or more, so in-order reads (statistics, evaluation) rarely
reopen, and pretraining on GeoPile-2's four sets keeps at most 256 such descriptors a process.
"""


def shard_file(root: Path, role: str, shard: int) -> Path:
    """The path of one role's shard: a plain ``.npy`` file any numpy can open."""
    return root / f"{role}-{shard:05d}.npy"


def _npy_header(dtype: np.dtype, shape: tuple[int, ...], length: int | None = None) -> bytes:
    """An npy v1.0 header, space-padded to ``length`` bytes (or the next multiple of 64).

    Writing the header ourselves lets rows stream straight to disk: we reserve the header for
    the largest possible shard, append rows, and fill in the true row count at the end.
    """
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": shape})  # fmt: skip
    prefix = 10  # magic (6) + version (2) + header length (2)
    if length is None:
        length = -(-(prefix + len(text) + 1) // 64) * 64
    padding = length - prefix - len(text) - 1
    if padding < 0:
        raise ValueError(f"npy header for shape {shape} does not fit in {length} bytes")
    body = (text + " " * padding + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + (len(body)).to_bytes(2, "little") + body


class _RoleStream:
    """One role's open shard file: rows appended as raw bytes behind a reserved header."""

    def __init__(self, path: Path, dtype: np.dtype, sample_shape: tuple[int, ...], rows_max: int):
        self.path = path
        self.tmp = temp_path(path)
        self.dtype = dtype
        self.sample_shape = sample_shape
        self.header_len = len(_npy_header(dtype, (rows_max, *sample_shape)))
        self.rows = 0
        self.file: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        self.file.seek(self.header_len)

    def append(self, array: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(array, dtype=self.dtype).data)
        self.rows += 1

    def finish(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.sample_shape), self.header_len))
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class ShardWriter:
    """Append samples (a dict of arrays by role) to a new shard set.

    ``bands`` names the bands of each role for meta.json (readers of the set address bands by
    name). Every sample must carry the same roles with the same dtype and shape as the first.
    """

    def __init__(
        self,
        out_dir: str | Path,
        rows_per_shard: int = 1024,
        *,
        bands: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.root = Path(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.bands = {role: list(names) for role, names in (bands or {}).items()}
        self._clear_previous()
        self._roles: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._valid: dict[str, list[bool]] = {}
        self._streams: dict[str, _RoleStream] = {}
        self._records: list[dict[str, Any]] = []
        self._shard = 0

    def _clear_previous(self) -> None:
        """Un-finish an old set in this folder first: its index would point at new shards."""
        for name in (INDEX_NAME, META_NAME):
            (self.root / name).unlink(missing_ok=True)
        for path in self.root.iterdir():
            if TEMP_MARK in path.name or _SHARD_NAME.fullmatch(path.name):
                path.unlink()

    def add(
        self,
        sample_id: str,
        arrays: Mapping[str, np.ndarray],
        *,
        valid_bands: Mapping[str, np.ndarray] | None = None,
        **columns: Any,
    ) -> None:
        """Append one sample; ``columns`` become index columns (split, source, origin, ...)."""
        if not self._roles:
            self._start_roles(arrays)
        if set(arrays) != set(self._roles):
            raise DataError(
                self.root, f"sample {sample_id}: roles {sorted(arrays)} != {sorted(self._roles)}"
            )
        for role, array in arrays.items():
            dtype, shape = self._roles[role]
            if array.dtype.newbyteorder("=") != dtype or array.shape != shape:
                raise DataError(
                    self.root,
                    f"sample {sample_id}: role {role!r} is {array.dtype}{list(array.shape)}, "
                    f"the set stores {dtype}{list(shape)}",
                )
        for role, mask in (valid_bands or {}).items():
            self._check_valid(sample_id, role, [bool(v) for v in mask])
        if not self._streams:
            self._streams = {
                role: _RoleStream(
                    shard_file(self.root, role, self._shard), dt, sh, self.rows_per_shard
                )
                for role, (dt, sh) in self._roles.items()
            }
        row = next(iter(self._streams.values())).rows
        for role, array in arrays.items():
            self._streams[role].append(array)
        self._records.append({"sample_id": sample_id, "shard": self._shard, "row": row, **columns})
        if row + 1 == self.rows_per_shard:
            self._finish_shard()

    def _start_roles(self, arrays: Mapping[str, np.ndarray]) -> None:
        if not arrays:
            raise DataError(self.root, "a sample needs at least one array")
        for role, array in arrays.items():
            if "-" in role or "/" in role:
                raise ValueError(f"role names may not contain '-' or '/': {role!r}")
            self._roles[role] = (array.dtype.newbyteorder("="), tuple(array.shape))

    def _check_valid(self, sample_id: str, role: str, mask: list[bool]) -> None:
        known = self._valid.setdefault(role, mask)
        if known != mask:
            raise DataError(
                self.root,
                f"sample {sample_id}: valid_bands[{role!r}] = {mask} differs from the set's "
                f"{known}; one shard set must have one band validity per role",
            )

    def _finish_shard(self) -> None:
        for stream in self._streams.values():
            stream.finish()
        self._streams = {}
        self._shard += 1

    def abort(self) -> None:
        """Drop the shard being written (e.g. after an error); finished shards stay unindexed."""
        for stream in self._streams.values():
            stream.abort()
        self._streams = {}

    def close(self, report: Mapping[str, Any] | None = None, **attrs: Any) -> pd.DataFrame:
        """Finish the last shard, then write index.parquet and meta.json (in that order, last).

        ``attrs`` (tile size, source, ...) are stored at the top level of meta.json.
        """
        if not self._records:
            self.abort()
            raise DataError(self.root, "no samples were added; refusing to write an empty set")
        if self._streams:
            self._finish_shard()
        index = pd.DataFrame.from_records(self._records)
        for column in BASE_COLUMNS:
            if column not in index:
                index[column] = None
        index = index[[*BASE_COLUMNS, *(c for c in index.columns if c not in BASE_COLUMNS)]]
        meta = {
            "format": FORMAT_VERSION,
            "count": len(index),
            "shards": self._shard,
            "rows_per_shard": self.rows_per_shard,
            "roles": {
                role: {"dtype": dtype.name, "shape": list(shape), "bands": self.bands.get(role)}
                for role, (dtype, shape) in self._roles.items()
            },
            "valid_bands": self._valid,
            "splits": {str(k): int(v) for k, v in index["split"].value_counts().items()},
            **attrs,
            "report": dict(report or {}),
        }
        with atomic_path(self.root / INDEX_NAME) as tmp:
            index.to_parquet(tmp, index=False)
        write_json_atomic(self.root / META_NAME, meta)
        return index


def index_digest(root: str | Path) -> str:
    """What a finished set holds, as a short hash: the sha256 of its index (every sample's id,
    shard, row, split and origin), cut to the 32 hex digits an MLflow dataset digest allows."""
    return hashlib.sha256((Path(root) / INDEX_NAME).read_bytes()).hexdigest()[:32]


class ShardSet:
    """A finished shard set, checked on open and read row by row through memory maps.

    ``get(i)`` addresses the i-th row of ``index`` (after any ``subset``), returning read-only
    views into the memory-mapped shards: no copy until the caller converts them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = self._load_meta()
        self._set_index(self._load_index())
        self._check_shards()

    def _set_index(self, index: pd.DataFrame) -> None:
        self.index = index
        self.roles: tuple[str, ...] = tuple(self.meta["roles"])
        self._shard = index["shard"].to_numpy(dtype=np.int64)
        self._row = index["row"].to_numpy(dtype=np.int64)
        self._maps: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def _load_meta(self) -> dict[str, Any]:
        index, meta = self.path / INDEX_NAME, self.path / META_NAME
        if not (index.is_file() and meta.is_file()):
            raise DataError(
                self.path,
                f"not a finished shard set ({INDEX_NAME} and {META_NAME} missing): the tiling "
                "job did not complete; run it again",
            )
        try:
            return json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(meta, f"not valid JSON: {exc}") from exc

    def _load_index(self) -> pd.DataFrame:
        path = self.path / INDEX_NAME
        try:
            index = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(path, f"not a readable parquet file: {exc}") from exc
        missing = [c for c in BASE_COLUMNS if c not in index]
        if missing:
            raise DataError(path, f"index lacks columns {missing}")
        if len(index) != self.meta.get("count"):
            raise DataError(
                path, f"index has {len(index)} rows, meta.json says {self.meta.get('count')}"
            )
        return index

    def _check_shards(self) -> None:
        """Every referenced shard must exist, hold exactly its indexed rows, and be complete."""
        rows = self.index.groupby("shard")["row"].agg(["max", "count"])
        for shard, (last, count) in rows.iterrows():
            if last + 1 != count:
                raise DataError(
                    self.path / INDEX_NAME, f"shard {shard} rows are not 0..{count - 1}"
                )
            for role, spec in self.meta["roles"].items():
                _check_npy(shard_file(self.path, role, int(shard)), spec, int(count))

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps would be pickled by value; DataLoader workers re-open them instead.
        return {**self.__dict__, "_maps": OrderedDict()}

    def array(self, role: str, shard: int) -> np.ndarray:
        """The memory-mapped array of one role's shard, from a cache of at most ``OPEN_MAPS``.

        Evicting a map only drops the cache's reference: arrays handed out earlier keep their
        map (and its descriptor) alive until they are freed, so they stay valid.
        """
        key = (role, shard)
        if key in self._maps:
            self._maps.move_to_end(key)
        else:
            if len(self._maps) >= OPEN_MAPS:
                self._maps.popitem(last=False)
            self._maps[key] = np.load(shard_file(self.path, role, shard), mmap_mode="r")
        return self._maps[key]

    def get(self, i: int, roles: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of the i-th indexed sample by role (views into the memory maps)."""
        shard, row = int(self._shard[i]), int(self._row[i])
        return {role: self.array(role, shard)[row] for role in roles or self.roles}

    def subset(self, mask: np.ndarray | pd.Series | Sequence[bool]) -> ShardSet:
        """The rows where ``mask`` holds, sharing files and meta (no data is copied)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise ValueError(f"mask must have shape ({len(self)},), got {mask.shape}")
        view = object.__new__(ShardSet)  # already checked: skip re-reading the files
        view.path, view.meta = self.path, self.meta
        view._set_index(self.index[mask].reset_index(drop=True))
        return view

    def split(self, name: str) -> ShardSet:
        """The rows of one split (train/val/test); an unknown name is an error, not empty."""
        mask = (self.index["split"] == name).to_numpy()
        if not mask.any():
            present = sorted(self.index["split"].dropna().unique())
            raise DataError(self.path, f"no samples in split {name!r}; splits present: {present}")
        return self.subset(mask)


def _check_npy(path: Path, spec: Mapping[str, Any], rows: int) -> None:
    if not path.is_file():
        raise DataError(path, "shard file missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, OSError) as exc:
        raise DataError(path, f"not a readable .npy file: {exc}") from exc
    expected = (rows, *spec["shape"])
    if tuple(shape) != expected or dtype.name != spec["dtype"] or fortran:
        raise DataError(
            path,
            f"holds {dtype.name}{list(shape)}, index/meta expect {spec['dtype']}{list(expected)}",
        )
    size = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < size:
        raise DataError(path, f"truncated: {path.stat().st_size} bytes, expected {size}")
