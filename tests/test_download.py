"""download / fetch_dataset / check_manual against an HTTP server on 127.0.0.1 run by the test.

The server supports HTTP Range and If-Range against an ETag and Last-Modified derived from the
content (SimpleHTTPRequestHandler does neither), can ignore Range like some servers do, can cut
its next response after N bytes to simulate a dropped connection (and then serve new content, as
a remote file replaced meanwhile), and answers with a chosen content type. It records every
request so tests can assert what was asked for and how many bytes went out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from msgfm.data import download as dl
from msgfm.data import sources
from msgfm.data.download import check_manual, download, fetch_dataset, prepare
from msgfm.data.extract import is_archive
from msgfm.data.sources import ManualInstructions, RemoteFile, Source
from msgfm.data.verify import LOCK_FILE
from msgfm.errors import ChecksumError, DataError, ManualDownloadRequired


class MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.ignore_range = False
        self.cut_next_after: int | None = None
        self.after_cut: dict[str, bytes] = {}
        self.content_type = "application/octet-stream"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class RangeHandler(BaseHTTPRequestHandler):
    server: MirrorServer

    def do_GET(self) -> None:
        srv = self.server
        record = {
            "path": unquote(self.path),
            "range": self.headers.get("Range"),
            "auth": self.headers.get("Authorization"),
            "if_range": self.headers.get("If-Range"),
            "sent": 0,
        }
        srv.requests.append(record)
        data = srv.files.get(record["path"])
        if data is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        modified = formatdate(1_700_000_000 + sum(data[:64]), usegmt=True)
        start = 0
        current = record["if_range"] in (None, etag, modified)
        if record["range"] and current and not srv.ignore_range:
            start = int(record["range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", srv.content_type)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        self.end_headers()
        cut, srv.cut_next_after = srv.cut_next_after, None
        if cut is not None:
            body = body[:cut]
            self.close_connection = True
            srv.files.update(srv.after_cut)
        # Recorded before the write: the client can read it all and the test check the record
        # before this thread runs again.
        record["sent"] = len(body)
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""


@pytest.fixture
def server() -> Iterator[MirrorServer]:
    srv = MirrorServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def _payload(size: int = 50_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar_gz(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_normal_download_is_verified_and_atomic(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload()
    server.files["/a.bin"] = data
    dest = download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.bin.digests.json", "a.bin"]
    assert [r["range"] for r in server.requests] == [None]


def test_interrupted_transfer_resumes_with_range(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload()
    server.files["/big.tar.gz"] = data
    server.cut_next_after = 12_345
    dest = download(
        f"{server.url}/big.tar.gz", tmp_path / "big.tar.gz", md5=_md5(data), backoff_s=0
    )
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, "bytes=12345-"]
    assert [r["sent"] for r in server.requests] == [12_345, len(data) - 12_345]


def test_part_left_by_a_killed_run_is_continued(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload()
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data[:20_000])
    download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.requests[0]["range"] == "bytes=20000-"
    assert sum(r["sent"] for r in server.requests) == len(data) - 20_000


def test_server_ignoring_range_restarts_from_zero(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload()
    server.files["/a.bin"] = data
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes that must not survive")
    download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.requests[0]["range"] == "bytes=33-"
    assert server.requests[0]["sent"] == len(data)


def test_complete_part_is_finished_on_416(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload(3000)
    server.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data)
    download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert [(r["range"], r["sent"]) for r in server.requests] == [("bytes=3000-", 0)]


def test_corrupt_file_is_quarantined(server: MirrorServer, tmp_path: Path) -> None:
    data = _payload()
    server.files["/a.tar.gz"] = data
    expected = _md5(b"what the provider published")
    with pytest.raises(ChecksumError) as err:
        download(f"{server.url}/a.tar.gz", tmp_path / "a.tar.gz", md5=expected, progress=False)
    bad = tmp_path / "quarantine" / f"a.tar.gz.{_md5(data)}.bad"
    assert str(err.value).startswith(f"{tmp_path / 'a.tar.gz'}: expected md5 {expected}")
    assert f"got {_md5(data)}; moved to {bad}" in str(err.value)
    assert bad.read_bytes() == data
    assert not (tmp_path / "a.tar.gz").exists()
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_verified_file_is_kept_and_a_wrong_one_replaced(
    server: MirrorServer, tmp_path: Path
) -> None:
    data = _payload()
    server.files["/a.bin"] = data
    (tmp_path / "a.bin").write_bytes(data)
    download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert server.requests == []

    (tmp_path / "a.bin").write_bytes(b"tampered")
    download(f"{server.url}/a.bin", tmp_path / "a.bin", md5=_md5(data), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert (tmp_path / "quarantine" / f"a.bin.{_md5(b'tampered')}.bad").is_file()
    assert len(server.requests) == 1


def test_file_url_mirror_is_copied_and_checked(tmp_path: Path) -> None:
    data = _payload(5000)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.bin").write_bytes(data)
    url = (tmp_path / "mirror" / "a.bin").as_uri()
    assert download(url, tmp_path / "out" / "a.bin", md5=_md5(data)).read_bytes() == data
    with pytest.raises(DataError, match=r"mirror file for b\.bin not found"):
        download(url.replace("a.bin", "b.bin"), tmp_path / "out" / "b.bin")


def test_credentials_go_in_a_header_never_in_logs(
    server: MirrorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/a.bin"] = b"payload"
    host = server.url.removeprefix("http://")
    caplog.set_level(logging.DEBUG)
    download(f"http://alice:s3cret@{host}/a.bin", tmp_path / "a.bin", progress=False)
    assert server.requests[0]["auth"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    with pytest.raises(DataError) as err:
        download(f"http://alice:s3cret@{host}/missing.bin", tmp_path / "m.bin", progress=False)
    assert "HTTP 404" in str(err.value)
    assert f"http://***@{host}/missing.bin" in str(err.value)  # msgfm.redaction
    assert "s3cret" not in str(err.value)
    assert "s3cret" not in caplog.text
    assert f"http://***@{host}/a.bin" in caplog.text


def test_unreachable_host_gives_up_after_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="after 2 retries"):
        download(f"http://127.0.0.1:{port}/a", tmp_path / "a", retries=2, backoff_s=0)
    assert not (tmp_path / "a").exists()


@pytest.fixture
def tinyset(monkeypatch: pytest.MonkeyPatch, server: MirrorServer) -> dict[str, bytes]:
    """A two-archive dataset plus a split file, registered and served under /tinyset/."""
    served = {
        "part1.tar.gz": _tar_gz({"scenes/s1_1/p1.tif": b"p1", "scenes/s1_1/p2.tif": b"p2"}),
        "part2.tar.gz": _tar_gz({"scenes/s2_1/p1.tif": b"q1"}),
        "train.csv": b"a,b\n",
    }
    files = tuple(
        RemoteFile(
            name,
            f"https://example.invalid/{name}",
            _md5(data),
            name.endswith(".tar.gz"),
            "" if name.endswith(".tar.gz") else "splits",
        )
        for name, data in served.items()
    )
    source = Source("tinyset", "Tiny set", "https://example.invalid", "nobody (2024)", files)
    monkeypatch.setitem(sources.SOURCES, "tinyset", source)
    for name, data in served.items():
        server.files[f"/tinyset/{name}"] = data
    return served


def test_fetch_dataset_end_to_end_through_mirror(
    server: MirrorServer, tinyset: dict[str, bytes], tmp_path: Path
) -> None:
    marker = fetch_dataset("tinyset", tmp_path, mirror=server.url + "/", progress=False)
    root = tmp_path / "tinyset"
    assert marker == root / ".msgfm-ready.json"
    content = json.loads(marker.read_text())
    assert content["dataset"] == "tinyset"
    assert content["files"] == list(tinyset)
    assert content["md5"] == {name: _md5(data) for name, data in tinyset.items()}
    assert (root / "scenes/s1_1/p2.tif").read_bytes() == b"p2"
    assert (root / "scenes/s2_1/p1.tif").read_bytes() == b"q1"
    assert (root / "splits/train.csv").read_bytes() == b"a,b\n"
    assert (tmp_path / "archives/tinyset/part1.tar.gz").read_bytes() == tinyset["part1.tar.gz"]
    assert sorted(r["path"] for r in server.requests) == sorted(f"/tinyset/{n}" for n in tinyset)


def test_fetch_dataset_rerun_after_crash_skips_finished_work(
    server: MirrorServer,
    tinyset: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_extract = dl.safe_extract
    extracted: list[str] = []

    def crash_on_part2(archive: Path, dest: Path, within: Path) -> list[Path]:
        if archive.name == "part2.tar.gz":
            raise KeyboardInterrupt  # the job is killed while unpacking part2
        extracted.append(archive.name)
        return real_extract(archive, dest, within=within)

    monkeypatch.setattr(dl, "safe_extract", crash_on_part2)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("tinyset", tmp_path, mirror=server.url, progress=False)
    assert not (tmp_path / "tinyset/.msgfm-ready.json").exists()
    requests_before = len(server.requests)

    def record(archive: Path, dest: Path, within: Path) -> list[Path]:
        extracted.append(archive.name)
        return real_extract(archive, dest, within=within)

    monkeypatch.setattr(dl, "safe_extract", record)
    marker = fetch_dataset("tinyset", tmp_path, mirror=server.url, progress=False)
    assert marker.is_file()
    assert extracted == ["part1.tar.gz", "part2.tar.gz"]  # part1 was not unpacked twice
    assert len(server.requests) == requests_before  # nothing downloaded again
    assert (tmp_path / "tinyset/scenes/s2_1/p1.tif").read_bytes() == b"q1"


def _manual_source(monkeypatch: pytest.MonkeyPatch, pack: bytes) -> None:
    files = (RemoteFile("pack.zip", "https://example.org/form", _md5(pack), True),)
    manual = ManualInstructions("https://example.org/form", files, "Ask nicely.", ("top",))
    source = Source("handset", "Hand set", "https://example.org", "nobody", manual=manual)
    monkeypatch.setitem(sources.SOURCES, "handset", source)


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_check_manual_explains_what_to_place_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _manual_source(monkeypatch, b"zip")
    with pytest.raises(ManualDownloadRequired) as err:
        check_manual("handset", tmp_path)
    message = str(err.value)
    assert "https://example.org/form" in message
    assert "pack.zip (missing, md5 " in message
    assert f"Put these files into {tmp_path / 'archives' / 'handset'}/" in message
    assert f"{tmp_path / 'handset'}/ contains: top" in message

    with pytest.raises(ManualDownloadRequired) as err:
        check_manual("spacenet2", tmp_path)
    folder = tmp_path / "archives" / "spacenet2"
    s3 = "s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/"
    for city in ("AOI_2_Vegas", "AOI_3_Paris", "AOI_4_Shanghai", "AOI_5_Khartoum"):
        name = f"SN2_buildings_train_{city}.tar.gz"
        assert f"aws s3 cp {s3}{name} {folder}/{name}" in str(err.value)


def test_check_manual_installs_placed_archives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pack = _zip_bytes({"top/area1.tif": b"tile"})
    _manual_source(monkeypatch, pack)
    (tmp_path / "archives/handset").mkdir(parents=True)
    (tmp_path / "archives/handset/pack.zip").write_bytes(pack)
    marker = check_manual("handset", tmp_path)
    assert json.loads(marker.read_text())["md5"] == {"pack.zip": _md5(pack)}
    assert (tmp_path / "handset/top/area1.tif").read_bytes() == b"tile"


def test_check_manual_rejects_a_wrong_placed_archive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _manual_source(monkeypatch, _zip_bytes({"top/area1.tif": b"tile"}))
    placed = tmp_path / "archives/handset/pack.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"not the archive")
    with pytest.raises(ChecksumError):
        check_manual("handset", tmp_path)
    assert not placed.exists()
    assert (placed.parent / "quarantine" / f"pack.zip.{_md5(b'not the archive')}.bad").is_file()
    assert not (tmp_path / "handset/.msgfm-ready.json").exists()


def test_check_manual_accepts_an_extracted_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _manual_source(monkeypatch, b"zip")
    (tmp_path / "handset/top").mkdir(parents=True)
    marker = check_manual("handset", tmp_path)
    assert json.loads(marker.read_text())["origin"] == "extracted by hand"


def test_prepare_fetches_manual_archives_from_a_mirror(
    monkeypatch: pytest.MonkeyPatch, server: MirrorServer, tmp_path: Path
) -> None:
    pack = _zip_bytes({"top/area2.tif": b"tile2"})
    _manual_source(monkeypatch, pack)
    server.files["/handset/pack.zip"] = pack
    marker = prepare("handset", tmp_path, mirror=server.url)
    assert marker.is_file()
    assert (tmp_path / "handset/top/area2.tif").read_bytes() == b"tile2"


def _register(monkeypatch: pytest.MonkeyPatch, server: MirrorServer, files: dict) -> None:
    """Serve ``files`` (name -> (bytes, subdir)) as dataset ``linkset`` without md5s."""
    remote = tuple(
        RemoteFile(name, f"https://example.invalid/{name}", None, is_archive(name), subdir)
        for name, (_, subdir) in files.items()
    )
    source = Source("linkset", "Link set", "https://example.invalid", "nobody", remote)
    monkeypatch.setitem(sources.SOURCES, "linkset", source)
    for name, (data, _) in files.items():
        server.files[f"/linkset/{name}"] = data


def _link_tar(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tf.addfile(info)
    return buffer.getvalue()


def test_links_across_a_datasets_archives_cannot_escape_the_data_root(
    monkeypatch: pytest.MonkeyPatch, server: MirrorServer, tmp_path: Path
) -> None:
    _register(
        monkeypatch,
        server,
        {
            "1.tar": (_link_tar("y", "."), ""),
            "2.tar": (_link_tar("x", "y/.."), ""),
            "3.tar": (_tar_gz({"evil.txt": b"x"}, "w"), "x"),  # would land above the data root
        },
    )
    with pytest.raises(DataError, match=r"2\.tar: symlink member 'x' -> 'y/\.\.'"):
        fetch_dataset("linkset", tmp_path / "data", mirror=server.url, progress=False)
    assert not (tmp_path / "data/linkset/x").is_symlink()
    assert not (tmp_path / "data/linkset/.msgfm-ready.json").exists()


def test_a_link_in_the_dataset_folder_is_not_written_through(
    monkeypatch: pytest.MonkeyPatch, server: MirrorServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data/linkset").mkdir(parents=True)
    (tmp_path / "data/linkset/splits").symlink_to(outside)  # left by an older version
    _register(monkeypatch, server, {"train.csv": (b"a,b\n", "splits")})
    with pytest.raises(DataError, match=r"splits: resolves to .* through a link"):
        fetch_dataset("linkset", tmp_path / "data", mirror=server.url, progress=False)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "data/linkset/.msgfm-ready.json").exists()


def test_part_of_a_replaced_remote_file_is_not_resumed(
    server: MirrorServer, tmp_path: Path
) -> None:
    """Old start + new end of a same-sized file would pass when no md5 is published."""
    old, new = _payload(seed=1), _payload(seed=2)
    server.files["/a.bin"] = old
    server.cut_next_after = 20_000
    server.after_cut = {"/a.bin": new}  # replaced on the server between two requests
    download(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, backoff_s=0)
    assert (tmp_path / "a.bin").read_bytes() == new
    assert server.requests[1]["range"] == "bytes=20000-"
    assert server.requests[1]["if_range"] == f'"{_md5(old)}"'
    assert server.requests[1]["sent"] == len(new)


def test_part_without_a_saved_validator_is_restarted_without_md5(
    server: MirrorServer, tmp_path: Path
) -> None:
    old, new = _payload(seed=1), _payload(seed=2)
    server.files["/a.bin"] = new
    (tmp_path / "a.bin.part").write_bytes(old[:20_000])  # from a version that saved none
    download(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == new
    assert server.requests[0]["range"] is None

    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/b.bin").write_bytes(new)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/b.bin.part").write_bytes(old[:20_000])
    download((tmp_path / "mirror/b.bin").as_uri(), tmp_path / "out/b.bin", progress=False)
    assert (tmp_path / "out/b.bin").read_bytes() == new


def test_first_download_without_md5_is_locked_and_later_ones_checked(
    server: MirrorServer, tmp_path: Path
) -> None:
    first, changed = _payload(seed=1), _payload(seed=2)
    server.files["/a.bin"] = first
    dest = tmp_path / "a.bin"
    download(f"{server.url}/a.bin", dest, progress=False)
    lock = json.loads((tmp_path / LOCK_FILE).read_text())
    assert lock == {"a.bin": {"size": len(first), "sha256": hashlib.sha256(first).hexdigest()}}

    dest.write_bytes(first[:-1] + b"!")  # changed on disk: quarantined, fetched again
    download(f"{server.url}/a.bin", dest, progress=False)
    assert dest.read_bytes() == first

    dest.unlink()
    server.files["/a.bin"] = changed  # the provider replaced it: refused, not silently used
    with pytest.raises(ChecksumError, match=rf"a\.bin: expected size {len(first)} and sha256"):
        download(f"{server.url}/a.bin", dest, progress=False)
    assert not dest.exists()
    assert (tmp_path / "quarantine" / f"a.bin.{_md5(changed)}.bad").read_bytes() == changed


LOGIN_PAGE = b"<!DOCTYPE html>\n<html><body><form>Please log in</form></body></html>\n"


def test_html_answer_is_never_saved_as_the_file(server: MirrorServer, tmp_path: Path) -> None:
    server.files["/a.tar.gz"] = LOGIN_PAGE
    server.content_type = "text/html; charset=utf-8"
    with pytest.raises(DataError, match=r"a\.tar\.gz: .* answered with an HTML page"):
        download(f"{server.url}/a.tar.gz", tmp_path / "a.tar.gz", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a.tar.gz", "a.zip", "a.tar", "splits.csv"])
def test_file_that_is_not_what_its_name_says_is_refused(
    server: MirrorServer, tmp_path: Path, name: str
) -> None:
    server.files[f"/{name}"] = LOGIN_PAGE  # served as application/octet-stream
    with pytest.raises(ChecksumError, match=rf"{name}: .*expected"):
        download(f"{server.url}/{name}", tmp_path / name, progress=False)
    assert not (tmp_path / name).exists()
    assert (tmp_path / "quarantine" / f"{name}.{_md5(LOGIN_PAGE)}.bad").is_file()


def test_unverified_present_file_is_replaced_not_trusted(
    server: MirrorServer, tmp_path: Path
) -> None:
    good = _tar_gz({"a.tif": b"tile"})
    server.files["/a.tar.gz"] = good
    (tmp_path / "a.tar.gz").write_bytes(LOGIN_PAGE)  # kept by a version without these checks
    download(f"{server.url}/a.tar.gz", tmp_path / "a.tar.gz", progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == good
    assert (tmp_path / "quarantine" / f"a.tar.gz.{_md5(LOGIN_PAGE)}.bad").is_file()


def test_unreadable_archive_without_md5_is_not_locked_in(
    monkeypatch: pytest.MonkeyPatch, server: MirrorServer, tmp_path: Path
) -> None:
    """Only its first download vouches for it: a broken one is dropped, the next run refetches."""
    good = _zip_bytes({"top/a.tif": b"tile" * 1000})
    _register(monkeypatch, server, {"pack.zip": (good[: len(good) // 2], "")})
    with pytest.raises(DataError, match=r"pack\.zip: cannot read zip archive .*moved to"):
        fetch_dataset("linkset", tmp_path, mirror=server.url, progress=False)
    server.files["/linkset/pack.zip"] = good
    fetch_dataset("linkset", tmp_path, mirror=server.url, progress=False)
    assert (tmp_path / "linkset/top/a.tif").read_bytes() == b"tile" * 1000
