"""safe_extract on good archives and on crafted malicious ones (each must be refused whole)."""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from msgfm.data.extract import safe_extract
from msgfm.errors import DataError, UnsafeArchiveError


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _tar(path: Path, members: list, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """Members are (name, content, unix mode); symlinks carry their target as content."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_tar_gz_extracts_and_merges_into_existing_folder(tmp_path: Path) -> None:
    first = _tar(
        tmp_path / "a.tar.gz",
        [
            _special("ROIs1158_spring", tarfile.DIRTYPE),
            _file("ROIs1158_spring/s1_1/p1.tif", b"one"),
            _file("ROIs1158_spring/s1_1/p2.tif", b"two"),
        ],
    )
    second = _tar(tmp_path / "b.tgz", [_file("ROIs1158_spring/s2_1/p1.tif", b"three")])
    dest = tmp_path / "data" / "sen12ms"

    placed = safe_extract(first, dest)
    safe_extract(second, dest)

    assert placed == [dest / "ROIs1158_spring"]
    assert (dest / "ROIs1158_spring/s1_1/p1.tif").read_bytes() == b"one"
    assert (dest / "ROIs1158_spring/s1_1/p2.tif").read_bytes() == b"two"
    assert (dest / "ROIs1158_spring/s2_1/p1.tif").read_bytes() == b"three"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["sen12ms"]


def test_plain_tar_with_internal_links_is_accepted(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "links.tar",
        [
            _file("d/real.txt", b"payload"),
            _special("d/alias.txt", tarfile.SYMTYPE, "real.txt"),
            _special("top_alias", tarfile.SYMTYPE, "d/../d"),
            _special("d/hard.txt", tarfile.LNKTYPE, "d/real.txt"),
        ],
        mode="w",
    )
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    assert (dest / "d/alias.txt").is_symlink()
    assert (dest / "d/alias.txt").read_bytes() == b"payload"
    assert (dest / "top_alias/real.txt").read_bytes() == b"payload"
    assert (dest / "d/hard.txt").read_bytes() == b"payload"


def test_zip_extracts_files_dirs_and_internal_symlink(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "mdas.zip",
        [
            ("Augsburg/", b"", stat.S_IFDIR | 0o755),
            ("Augsburg/sub_area_1/rgb.tif", b"rgb", stat.S_IFREG | 0o644),
            ("Augsburg/readme.txt", b"hello", 0),
            ("Augsburg/latest", b"sub_area_1", stat.S_IFLNK | 0o777),
        ],
    )
    dest = tmp_path / "mdas"
    assert safe_extract(archive, dest) == [dest / "Augsburg"]
    assert (dest / "Augsburg/sub_area_1/rgb.tif").read_bytes() == b"rgb"
    assert (dest / "Augsburg/readme.txt").read_bytes() == b"hello"
    assert (dest / "Augsburg/latest").is_symlink()
    assert (dest / "Augsburg/latest/rgb.tif").read_bytes() == b"rgb"


BAD_TARS = {
    "absolute path": [_file("/etc/evil.txt")],
    "dotdot": [_file("ok.txt"), _file("../evil.txt")],
    "dotdot inside": [_file("a/../../evil.txt")],
    "symlink absolute": [_special("link", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink outside": [_special("a/link", tarfile.SYMTYPE, "../../outside")],
    # each link looks harmless alone; following a/b first makes c escape
    "symlink chain": [
        _special("a/b", tarfile.SYMTYPE, ".."),
        _special("c", tarfile.SYMTYPE, "a/b/.."),
    ],
    "hardlink outside": [_special("hard", tarfile.LNKTYPE, "../outside.txt")],
    "hardlink absolute": [_special("hard", tarfile.LNKTYPE, "/etc/passwd")],
    "char device": [_file("ok.txt"), _special("dev/tty", tarfile.CHRTYPE)],
    "block device": [_special("sda", tarfile.BLKTYPE)],
    "fifo": [_special("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_malicious_tar_is_refused_before_writing(tmp_path: Path, case: str) -> None:
    member_name = BAD_TARS[case][-1][0].name
    archive = _tar(tmp_path / "bad.tar.gz", [_file("first_good.txt"), *BAD_TARS[case]])
    dest = tmp_path / "dataset"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, dest)
    assert "bad.tar.gz" in str(err.value)
    assert member_name in str(err.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


BAD_ZIPS = {
    "absolute path": [("/abs.txt", b"x", 0)],
    "dotdot": [("good.txt", b"x", 0), ("../evil.txt", b"x", 0)],
    "backslash dotdot": [("..\\..\\evil.txt", b"x", 0)],
    "symlink outside": [("link", b"../../etc/passwd", stat.S_IFLNK | 0o777)],
    "symlink absolute": [("link", b"/etc/passwd", stat.S_IFLNK | 0o777)],
    "fifo": [("pipe", b"", stat.S_IFIFO | 0o644)],
    "char device": [("tty", b"", stat.S_IFCHR | 0o644)],
}


@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_malicious_zip_is_refused_before_writing(tmp_path: Path, case: str) -> None:
    member_name = BAD_ZIPS[case][-1][0]
    archive = _zip(tmp_path / "bad.zip", [("first_good.txt", b"ok", 0), *BAD_ZIPS[case]])
    dest = tmp_path / "dataset"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, dest)
    assert "bad.zip" in str(err.value)
    assert repr(member_name) in str(err.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_refusal_leaves_existing_content_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "dataset"
    (dest / "top").mkdir(parents=True)
    (dest / "top/keep.tif").write_bytes(b"keep")
    archive = _tar(tmp_path / "evil.tar", [_file("top/keep.tif", b"new"), _file("../x")], "w")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert (dest / "top/keep.tif").read_bytes() == b"keep"
    assert not (tmp_path / "x").exists()


def test_stale_temporary_folder_from_a_killed_run_is_replaced(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [_file("new.txt", b"new")])
    stale = tmp_path / ".out.extracting-a.tar.gz"
    stale.mkdir()
    (stale / "half_written.txt").write_bytes(b"junk")
    safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert not stale.exists()


def test_unknown_suffix_and_corrupt_tar_raise_data_errors(tmp_path: Path) -> None:
    rar = tmp_path / "data.rar"
    rar.write_bytes(b"Rar!")
    with pytest.raises(DataError, match="not an archive"):
        safe_extract(rar, tmp_path / "out")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot read tar archive"):
        safe_extract(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_or_corrupt_zip_is_one_clear_error(tmp_path: Path) -> None:
    whole = _zip(tmp_path / "whole.zip", [("a.tif", b"abc" * 5000, 0)]).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    flipped = tmp_path / "flipped.zip"  # the directory is intact, a data byte is not
    flipped.write_bytes(whole[:40] + bytes([whole[40] ^ 0xFF]) + whole[41:])
    for broken in (cut, flipped):
        pattern = rf"{broken.name}: cannot read zip archive \(.+\); expected a whole zip"
        with pytest.raises(DataError, match=pattern):
            safe_extract(broken, tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "members",
    [
        [("a.tif", b"one", 0), ("a.tif", b"two", 0)],
        [("l", b"x", stat.S_IFLNK | 0o777), ("./l", b"y", stat.S_IFLNK | 0o777)],
        [("a", b"file", 0), ("a/b.tif", b"inside a file", 0)],
    ],
    ids=["file twice", "link twice", "file used as folder"],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_holding_a_name_twice_is_refused(tmp_path: Path, members: list) -> None:
    archive = _zip(tmp_path / "dup.zip", [("x/", b"", stat.S_IFDIR | 0o755), *members])
    with pytest.raises(UnsafeArchiveError, match=r"dup\.zip: member .* (twice|a file)"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _link_tar(path: Path, *links: tuple[str, str]) -> Path:
    return _tar(path, [_special(name, tarfile.SYMTYPE, target) for name, target in links], "w")


def test_links_across_archives_cannot_escape(tmp_path: Path) -> None:
    """Each archive is harmless alone; together ``x -> y/..`` would point above the dataset."""
    dest = tmp_path / "data" / "set"
    safe_extract(_link_tar(tmp_path / "1.tar", ("y", ".")), dest)
    with pytest.raises(UnsafeArchiveError, match=r"2\.tar: symlink member 'x' -> 'y/\.\.'"):
        safe_extract(_link_tar(tmp_path / "2.tar", ("x", "y/..")), dest)
    assert not (dest / "x").is_symlink()
    # In the other order the link would point at nothing yet, and turn outside later.
    other = tmp_path / "data" / "other"
    with pytest.raises(UnsafeArchiveError, match=r"'x' -> 'y/\.\.' .*nothing"):
        safe_extract(_link_tar(tmp_path / "3.tar", ("x", "y/..")), other)
    assert not (other / "x").is_symlink()


def test_a_link_in_the_destination_is_never_replaced_or_written_through(tmp_path: Path) -> None:
    dest = tmp_path / "set"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").mkdir()
    (dest / "y").symlink_to("sub")
    (dest / "x").symlink_to("y/..")  # the dataset folder itself, for now
    with pytest.raises(UnsafeArchiveError, match=r"y: is a link .*4\.tar"):
        safe_extract(_link_tar(tmp_path / "4.tar", ("y", ".")), dest)
    assert (dest / "y").readlink() == Path("sub")

    (dest / "out").symlink_to(outside)  # e.g. left by a version without these checks
    archive = _tar(tmp_path / "5.tar", [_file("out/evil.txt")], "w")
    with pytest.raises(UnsafeArchiveError, match=r"out: is a link"):
        safe_extract(archive, dest)
    with pytest.raises(UnsafeArchiveError, match=r"out: resolves to .*through a link"):
        safe_extract(_tar(tmp_path / "6.tar", [_file("evil.txt")], "w"), dest / "out", within=dest)
    assert list(outside.iterdir()) == []


def test_same_link_from_a_rerun_is_accepted(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", [_file("d/f.txt"), _special("l", tarfile.SYMTYPE, "d")], "w")
    safe_extract(archive, tmp_path / "set")
    safe_extract(archive, tmp_path / "set")  # a killed run is replayed over what it left
    assert (tmp_path / "set/l/f.txt").read_bytes() == b"x"


def test_archive_unpacking_far_beyond_its_size_is_refused_before_writing(tmp_path: Path) -> None:
    zeros = b"\0" * (8 << 20)  # 8 MiB of zeros compress to a few KiB
    bomb = _tar(tmp_path / "bomb.tar.gz", [_file("zeros.bin", zeros)])
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(UnsafeArchiveError, match=r"bomb\.tar\.gz: unpacks to 8388608 bytes"):
        safe_extract(bomb, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]
    # A configured bound replaces the default one, both ways.
    safe_extract(bomb, tmp_path / "out", max_bytes=8 << 20)
    zipped = _zip(tmp_path / "small.zip", [("a.txt", b"abc" * 100, 0)])
    with pytest.raises(UnsafeArchiveError, match=r"small\.zip: unpacks to 300 bytes, more than"):
        safe_extract(zipped, tmp_path / "other", max_bytes=299)
    assert not (tmp_path / "other").exists()


def test_archive_larger_than_the_free_disk_space_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "a.tar", [_file("a.bin", b"x" * 5000)], "w")
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: real._replace(free=4999))
    with pytest.raises(DataError, match=r"a\.tar: unpacks to 5000 bytes but only 4999 are free"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_member_larger_than_it_declares_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bin", b"\0" * 100_000)
    data = bytearray(archive.read_bytes())
    # file_size sits at offset 22 of the local header and 24 of the central directory entry
    for offset in (22, data.index(b"PK\x01\x02") + 24):
        data[offset : offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"liar\.zip: cannot read zip archive"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.zip"]
