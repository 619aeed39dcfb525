"""Extract downloaded dataset archives without trusting them.

Archives come from the network or from a user's drive, so a member may try to write outside the
target folder (absolute paths, ``..``, links that point elsewhere) or create device nodes. Every
member is validated before the first byte is written, the archive is then unpacked into a
temporary folder next to the destination, and only a complete extraction is moved into place: a
killed job leaves a hidden ``.extracting-`` folder that the next run deletes, never a half-filled
dataset that looks finished.

Tar archives are read as streams and their member list is dropped as it is walked: BigEarthNet-S2
holds about eight million members, and keeping every ``TarInfo`` would cost gigabytes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from msgfm.errors import DataError, UnsafeArchiveError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ZIP_SUFFIXES = (".zip",)
# Symlink chains longer than this are treated as loops (Linux gives up after 40 as well).
_MAX_LINK_DEPTH = 40
# Default bound on extracted bytes per archive byte. The datasets' GeoTIFF archives expand by
# well under 10x, label masks by some tens; a deflate bomb by about 1000x.
MAX_EXPANSION = 200


def is_archive(name: str) -> bool:
    """Whether ``name`` has a suffix that :func:`safe_extract` knows how to unpack."""
    return name.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


def safe_extract(
    archive: Path, dest: Path, *, within: Path | None = None, max_bytes: int | None = None
) -> list[Path]:
    """Validate every member of ``archive``, then extract it into ``dest`` (merging folders).

    ``within`` (default ``dest``) is the folder no link may lead out of: a dataset's archives
    share it, and a link one archive left there must not redirect what the next one writes.
    The members' declared sizes must add up to at most ``max_bytes`` (default
    :data:`MAX_EXPANSION` times the archive's size) and to less than the free disk space; the
    readers never yield more than a member declares (zip members are then refused by their CRC).
    Returns the top-level paths inside ``dest`` that the archive created or merged into (not
    every file: a dataset archive can hold millions). Raises UnsafeArchiveError naming the
    archive and the member when any member is unsafe; nothing is written in that case, except
    for a link that proves unsafe only against what the destination already holds: then the
    archive's links are removed again and its plain files stay, never recorded as installed.
    """
    archive, dest = Path(archive), Path(dest)
    within = dest if within is None else Path(within)
    require_real_folder(dest, within)
    name = archive.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        try:
            with zipfile.ZipFile(archive) as zf:
                targets, links, size = _validate_zip(archive, zf)
                _check_size(archive, dest, size, max_bytes)
                return _extract_then_move(
                    archive, dest, within, links, lambda tmp: _unpack_zip(zf, targets, tmp)
                )
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            # A cut download or a flipped byte: the file cannot be repaired, only fetched again.
            raise DataError(archive, f"cannot read zip archive ({exc}); expected a whole zip") from exc
    if name.endswith(TAR_SUFFIXES):
        links, size = _validate_tar(archive)
        _check_size(archive, dest, size, max_bytes)
        return _extract_then_move(
            archive, dest, within, links, lambda tmp: _unpack_tar(archive, tmp)
        )
    raise DataError(
        archive,
        f"not an archive this package can extract (expected one of "
        f"{', '.join(TAR_SUFFIXES + ZIP_SUFFIXES)})",
    )


def _member_parts(archive: Path, member: str) -> tuple[str, ...]:
    """Split a member name into path components, refusing anything that is not a plain relative
    path (backslashes count as separators so that Windows-made names cannot smuggle ``..``)."""
    text = member.replace("\\", "/")
    posix = PurePosixPath(text)
    if posix.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise UnsafeArchiveError(archive, f"member {member!r} has an absolute path")
    parts = tuple(p for p in posix.parts if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(archive, f"member {member!r} contains a '..' component")
    return parts


def _resolve(
    parts: tuple[str, ...], links: dict[tuple[str, ...], str], depth: int = 0
) -> tuple[str, ...] | None:
    """Resolve ``parts`` relative to the extraction root, following the archive's own symlinks.

    Returns the resolved components, or None when the path climbs above the root. Checking link
    targets one by one is not enough: ``a/b -> ..`` and ``c -> a/b/..`` both look harmless on
    their own, yet ``c`` lands outside once ``a/b`` is followed.
    """
    if depth > _MAX_LINK_DEPTH:
        return None
    resolved: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get(tuple(resolved))
        if target is None:
            continue
        if target.startswith("/"):
            return None
        followed = _resolve((*resolved[:-1], *target.split("/")), links, depth + 1)
        if followed is None:
            return None
        resolved = list(followed)
    return tuple(resolved)


def _check_links(
    archive: Path,
    symlinks: list[tuple[str, tuple[str, ...], str]],
    hardlinks: list[tuple[str, str]],
    links: dict[tuple[str, ...], str],
) -> None:
    """Refuse symlinks (target relative to the link's folder) and hardlinks (target relative to
    the archive root) that resolve outside the extraction root."""
    for member, parts, target in symlinks:
        if target.startswith("/") or _resolve((*parts[:-1], *target.split("/")), links) is None:
            raise UnsafeArchiveError(
                archive, f"symlink member {member!r} -> {target!r} points outside the target"
            )
    for member, target in hardlinks:
        try:
            target_parts = _member_parts(archive, target)
        except UnsafeArchiveError:
            target_parts = None
        if not target_parts or _resolve(target_parts, links) is None:
            raise UnsafeArchiveError(
                archive, f"hardlink member {member!r} -> {target!r} points outside the target"
            )


def _iter_tar(archive: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Yield the members of a (possibly compressed) tar in order, forgetting each one after use
    so memory stays flat however many members the archive has."""
    try:
        with tarfile.open(archive, mode="r|*") as tf:
            while (member := tf.next()) is not None:
                yield tf, member
                tf.members.clear()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(archive, f"cannot read tar archive ({exc})") from exc


# A symlink member: its name, its path components and its target, as the archive states them.
_Link = tuple[str, tuple[str, ...], str]


def _validate_tar(archive: Path) -> tuple[list[_Link], int]:
    """Check every member; return the symlink members and the bytes the files declare."""
    symlinks: list[_Link] = []
    hardlinks, links = [], {}
    size = 0
    for _, member in _iter_tar(archive):
        parts = _member_parts(archive, member.name)
        size += member.size if member.isreg() else 0
        if member.issym():
            symlinks.append((member.name, parts, member.linkname))
            links[parts] = member.linkname
        elif member.islnk():
            hardlinks.append((member.name, member.linkname))
        elif not (member.isreg() or member.isdir()):
            raise UnsafeArchiveError(
                archive, f"member {member.name!r} is a device, fifo or other special file"
            )
    _check_links(archive, symlinks, hardlinks, links)
    return symlinks, size


def _unpack_tar(archive: Path, tmp: Path) -> None:
    # The "data" filter (Python >= 3.11.4) re-checks every path against the real file system and
    # drops ownership and special mode bits; our own validation above already gave explicit errors.
    has_filter = hasattr(tarfile, "data_filter")
    for tf, member in _iter_tar(archive):
        if has_filter:
            tf.extract(member, tmp, filter="data")
        else:
            member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
            member.mode &= 0o755
            tf.extract(member, tmp)


def _zip_mode(info: zipfile.ZipInfo) -> int:
    """The unix file mode a zip entry carries in its external attributes (0 when made on
    Windows or by a tool that does not record it)."""
    return (info.external_attr >> 16) & 0xFFFF


def _validate_zip(
    archive: Path, zf: zipfile.ZipFile
) -> tuple[dict[zipfile.ZipInfo, str], list[_Link], int]:
    """Check every entry; return the symlink entries with their targets, as :data:`_Link`, and
    the bytes the entries declare.

    A zip may hold one name twice (or a file and a folder below it); which copy wins would
    depend on the extractor, so such an archive is refused rather than unpacked either way.
    """
    symlinks: list[_Link] = []
    link_map, targets = {}, {}
    files: set[tuple[str, ...]] = set()
    seen: set[tuple[str, ...]] = set()
    for info in zf.infolist():
        parts = _member_parts(archive, info.filename)
        if parts in seen:
            raise UnsafeArchiveError(
                archive, f"member {info.filename!r} appears twice; expected each name once"
            )
        seen.add(parts)
        if not info.is_dir():
            files.add(parts)
        mode = _zip_mode(info)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            target = zf.read(info).decode("utf-8", errors="replace")
            symlinks.append((info.filename, parts, target))
            link_map[parts] = target
            targets[info] = target
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(
                archive, f"member {info.filename!r} is a device, fifo or other special file"
            )
    for parts in seen:
        for end in range(1, len(parts)):
            if parts[:end] in files and parts[:end] not in link_map:
                raise UnsafeArchiveError(
                    archive,
                    f"member {'/'.join(parts)!r} lies below {'/'.join(parts[:end])!r}, "
                    "which is a file; expected a folder",
                )
    _check_links(archive, symlinks, [], link_map)
    return targets, symlinks, sum(info.file_size for info in zf.infolist())


def _unpack_zip(zf: zipfile.ZipFile, links: dict[zipfile.ZipInfo, str], tmp: Path) -> None:
    # zipfile.extract would write a symlink entry as a small text file holding its target; we
    # create real symlinks (already validated) and copy everything else ourselves.
    for info in zf.infolist():
        parts = tuple(p for p in PurePosixPath(info.filename.replace("\\", "/")).parts if p != ".")
        if not parts:
            continue
        target = tmp.joinpath(*parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if info in links:
            os.symlink(links[info], target)
            continue
        with zf.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
        mode = _zip_mode(info) & 0o755
        if mode:
            os.chmod(target, mode)


def _check_size(archive: Path, dest: Path, size: int, max_bytes: int | None) -> None:
    """Refuse an archive whose declared content exceeds the bound or the free disk space before
    anything is written, so that a bomb cannot fill the disk a cluster's jobs share."""
    bound = MAX_EXPANSION * archive.stat().st_size if max_bytes is None else max_bytes
    if size > bound:
        why = "the configured bound" if max_bytes is not None else f"{MAX_EXPANSION}x its size"
        raise UnsafeArchiveError(
            archive, f"unpacks to {size} bytes, more than {bound} ({why}); expected at most that"
        )
    existing = next(p for p in (dest, *dest.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if size >= free:
        raise DataError(archive, f"unpacks to {size} bytes but only {free} are free in {existing}")


def require_real_folder(folder: Path, root: Path) -> None:
    """Refuse ``folder`` when a link below ``root`` lies on its path: what is written there
    would land wherever that link points, and a link an earlier archive left may point anywhere.
    ``root`` itself may be a link (a data root on scratch space often is)."""
    expected = Path(os.path.realpath(root)) / Path(folder).relative_to(root)
    real = Path(os.path.realpath(folder))
    if real != expected:
        raise UnsafeArchiveError(
            folder, f"resolves to {real} through a link; expected the real folder {expected}"
        )


def _extract_then_move(
    archive: Path,
    dest: Path,
    within: Path,
    links: list[_Link],
    unpack: Callable[[Path], None],
) -> list[Path]:
    """Run ``unpack`` into a temporary folder beside ``dest`` and move the result into place,
    then check the archive's links where they now stand (see :func:`_check_placed_links`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.extracting-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run: never trusted
    tmp.mkdir()
    try:
        unpack(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        placed = []
        for entry in sorted(tmp.iterdir()):
            _move_into(entry, dest / entry.name, archive)
            placed.append(dest / entry.name)
        _check_placed_links(archive, dest, within, links)
        return placed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_placed_links(archive: Path, dest: Path, within: Path, links: list[_Link]) -> None:
    """Resolve each link the archive placed against the real destination, and remove them all
    when one leads outside ``within`` or to nothing.

    The archive's own check cannot see links already in the destination (``y -> .`` from one
    archive turns ``x -> y/..`` from the next into a way out). A link whose whole target exists
    keeps its meaning afterwards: later archives only add new names, never replace a link or a
    folder (:func:`_move_into`), so a dangling link, which a later one could redirect, is refused.
    """
    root = os.path.realpath(within)
    for member, parts, target in links:
        try:
            real = os.path.realpath(dest.joinpath(*parts), strict=True)
        except OSError:
            real = None
        if real is None or os.path.commonpath([root, real]) != root:
            for _, placed, _ in links:
                link = dest.joinpath(*placed)
                if link.is_symlink():
                    link.unlink()
            where = "to nothing" if real is None else f"to {real}"
            raise UnsafeArchiveError(
                archive,
                f"symlink member {member!r} -> {target!r} leads {where} in {dest}; "
                f"expected a target inside {within}",
            )


def _move_into(src: Path, dst: Path, archive: Path) -> None:
    """Move ``src`` to ``dst``, merging folders that exist on both sides (several archives of a
    dataset may share a top folder, and a rerun replaces what a killed run left).

    A link already at ``dst`` is never replaced or merged into: other links may lead through it.
    """
    if dst.is_symlink():
        if src.is_symlink() and os.readlink(src) == os.readlink(dst):
            return  # the same link, left by a killed run of this archive
        raise UnsafeArchiveError(
            dst, f"is a link in the destination; {archive.name} holds another entry of that name"
        )
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in src.iterdir():
            _move_into(child, dst / child.name, archive)
        return
    if dst.is_dir():
        raise DataError(dst, f"is a folder but {archive.name} holds a file of that name")
    if src.is_symlink() and dst.exists():
        raise DataError(dst, f"is a file but {archive.name} holds a link of that name")
    if src.is_dir() and dst.exists():
        raise DataError(dst, f"is a file but {archive.name} holds a folder of that name")
    os.replace(src, dst)
