"""Decide whether a downloaded or placed file is the one expected, before anything uses it.

A file with a published md5 must match it. Where the provider publishes none (SEN12MS-CR,
GeoPile, Vaihingen's eroded ground truth), the file must look like what its name says (an
archive starts with its format's magic bytes; no file is an HTML page, which is what a mirror
that wants a login answers with HTTP 200) and match the size and SHA-256 recorded in
``checksums.lock.json`` beside it when it was first downloaded: trust on first use, so a file
the provider replaced later, or a resume that glued two versions together, is noticed. A file
that fails is moved to ``quarantine/`` where nothing picks it up.

Digests are cached next to the file (``.<name>.digests.json``, keyed on size and mtime) so a
rerun does not re-read 60 GB to confirm what it verified an hour ago.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from msgfm.errors import ChecksumError
from msgfm.files import write_json_atomic

log = logging.getLogger(__name__)

CHUNK = 1 << 20
LOCK_FILE = "checksums.lock.json"
# (offset, bytes) every archive of that suffix starts with.
_MAGIC = {
    ".zip": (0, b"PK\x03\x04"),
    ".tar.gz": (0, b"\x1f\x8b"),
    ".tgz": (0, b"\x1f\x8b"),
    ".tar.bz2": (0, b"BZh"),
    ".tar.xz": (0, b"\xfd7zXZ\x00"),
    ".tar": (257, b"ustar"),
}


def digest_cache(path: Path) -> Path:
    """Where the digests of ``path`` are cached (a rename must carry it along)."""
    return path.with_name(f".{path.name}.digests.json")


def file_digests(path: Path) -> dict[str, str]:
    """md5 and SHA-256 of ``path`` in one read, cached beside it while size and mtime hold."""
    path = Path(path)
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        cached = json.loads(digest_cache(path).read_text())
        if {k: cached.get(k) for k in key} == key:
            return {"md5": cached["md5"], "sha256": cached["sha256"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    digests = {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
    write_json_atomic(digest_cache(path), {**key, **digests})
    return digests


def file_md5(path: Path) -> str:
    """md5 of ``path`` (cached, see :func:`file_digests`)."""
    return file_digests(path)["md5"]


def verify_file(path: Path, md5: str | None, *, name: str | None = None) -> str:
    """Return the md5 of ``path`` (to be called ``name``) once it is the expected file; else move
    it to ``quarantine/<name>.<md5>.bad`` beside it and raise ChecksumError saying why."""
    path = Path(path)
    name = name or path.name
    digests = file_digests(path)
    if md5 is not None:
        got = digests["md5"]
        problem = None if got == md5.lower() else f"expected md5 {md5}, got {got}"
    else:
        problem = _format_problem(path, name) or _check_lock(
            path.parent / LOCK_FILE, name, path.stat().st_size, digests["sha256"]
        )
    if problem is None:
        return digests["md5"]
    bad = quarantine(path, name=name)
    raise ChecksumError(path.with_name(name), f"{problem}; moved to {bad}")


def quarantine(path: Path, *, name: str | None = None) -> Path:
    """Move ``path`` (to be called ``name``) to ``quarantine/<name>.<md5>.bad`` beside it, where
    nothing picks it up, and forget the size and SHA-256 its first download recorded: a file
    that proved broken must not vouch for the next one. Returns the new path."""
    name = name or path.name
    digests = file_digests(path)
    bad = path.parent / "quarantine" / f"{name}.{digests['md5']}.bad"
    bad.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, bad)
    digest_cache(path).unlink(missing_ok=True)
    lock = path.parent / LOCK_FILE
    recorded = _read_lock(lock)
    if recorded.get(name, {}).get("sha256") == digests["sha256"]:
        del recorded[name]
        write_json_atomic(lock, recorded)
    return bad


def _format_problem(path: Path, name: str) -> str | None:
    """Why ``path`` is not the kind of file ``name`` says, or None."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "is an HTML page (a login or error page?); expected the data file"
    for suffix, (offset, magic) in _MAGIC.items():
        if name.lower().endswith(suffix):
            found = head[offset : offset + len(magic)]
            if found != magic:
                return f"expected a {suffix} archive starting with {magic!r}, found {found!r}"
    return None


def _check_lock(lock: Path, name: str, size: int, sha256: str) -> str | None:
    """Compare with the size and SHA-256 first recorded for ``name`` in ``lock``; record them
    when there are none yet (the first download is trusted, later ones must agree)."""
    recorded = _read_lock(lock)
    seen = {"size": size, "sha256": sha256}
    expected = recorded.get(name)
    if expected is None:
        write_json_atomic(lock, {**recorded, name: seen})
        log.info("%s: no published checksum; size and SHA-256 recorded in %s", name, lock)
        return None
    if expected == seen:
        return None
    return (
        f"expected size {expected['size']} and sha256 {expected['sha256']} as first downloaded "
        f"(recorded in {lock}; delete that entry if the provider really replaced the file), "
        f"got size {size} and sha256 {sha256}"
    )


def _read_lock(lock: Path) -> dict[str, dict]:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ChecksumError(lock, f"is not valid JSON ({exc}); fix or delete it") from exc


