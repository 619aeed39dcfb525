"""Fetch dataset archives over HTTP(S) or from a local mirror, verify them, and unpack them.

Dataset archives are tens of gigabytes on shared cluster links, so a transfer that breaks must
continue where it stopped (HTTP Range on ``<name>.part``, with If-Range so that a remote file
replaced meanwhile is fetched whole instead of glued onto the old start), a file is only given
its final name once complete and verified (``os.replace``; :mod:`msgfm.data.verify` says what
verified means), and an HTML page is never saved as a data file. Only the standard library talks
to the network.

Layout: archives land in ``<data_root>/archives/<dataset>/``; their content goes to
``<data_root>/<dataset>/``, where one small JSON per installed archive (in ``.msgfm-installed/``)
lets a rerun after a crash skip what is already unpacked, and ``.msgfm-ready.json`` is written
last.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from tqdm import tqdm

from msgfm.data.extract import require_real_folder, safe_extract
from msgfm.data.marker import write_ready_marker
from msgfm.data.sources import RemoteFile, Source, get_source
from msgfm.data.verify import digest_cache, file_md5, quarantine, verify_file
from msgfm.errors import ChecksumError, DataError, ManualDownloadRequired
from msgfm.files import atomic_path, write_json_atomic
from msgfm.redaction import redact_url

log = logging.getLogger(__name__)

CHUNK = 1 << 20
INSTALLED_DIR = ".msgfm-installed"
# HTTP statuses worth retrying: the server or a proxy is busy, not the request wrong.
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Interrupted(Exception):
    """The connection ended before the announced number of bytes arrived."""




def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    progress: bool = True,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``url`` (http, https or file) to ``dest``, resuming from ``<dest>.part``.

    A present ``dest`` that passes :func:`verify_file` is kept as it is; one that does not is
    quarantined and fetched again. Without an md5, a part is only continued where the server
    confirms (If-Range) that the file is the one it started. Retries ``retries`` times in a row
    without progress, waiting ``backoff_s`` doubled each time.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            verify_file(dest, md5)
            log.info("%s: already present and verified", dest)
            return dest
        except ChecksumError as exc:
            log.warning("%s; downloading it again", exc)
    part = dest.with_name(dest.name + ".part")
    scheme = urlsplit(url).scheme.lower()
    log.info("downloading %s -> %s", redact_url(url), dest)
    if scheme == "file":
        _copy_local(url, part, dest, resume=md5 is not None)
    elif scheme in ("http", "https"):
        _fetch_http(url, part, md5 is not None, progress, retries, backoff_s, timeout_s)
    else:
        raise DataError(dest, f"cannot fetch {redact_url(url)}: only http(s):// and file:// work")
    _validator_file(part).unlink(missing_ok=True)  # the part is complete: no resume any more
    verify_file(part, md5, name=dest.name)
    os.replace(part, dest)
    # A rename keeps size and mtime, so the digests just computed stay valid for the final name.
    os.replace(digest_cache(part), digest_cache(dest))
    return dest


def _copy_local(url: str, part: Path, dest: Path, *, resume: bool) -> None:
    """Copy a file:// mirror's file, continuing a part only where an md5 will check the result
    (a local file has no validator that says the part came from the same version)."""
    parts = urlsplit(url)
    source = Path(unquote(parts.path))
    if parts.netloc not in ("", "localhost") or not source.is_file():
        raise DataError(source, f"mirror file for {dest.name} not found ({redact_url(url)})")
    offset = part.stat().st_size if resume and part.is_file() else 0
    if offset > source.stat().st_size:
        offset = 0
    with open(source, "rb") as src, open(part, "r+b" if offset else "wb") as out:
        src.seek(offset)
        out.seek(offset)
        out.truncate()
        shutil.copyfileobj(src, out, CHUNK)


def _request(url: str, offset: int, if_range: str | None) -> urllib.request.Request:
    """A GET for ``url`` from byte ``offset`` if the remote still matches ``if_range``;
    credentials in the URL become a Basic header that urllib does not forward when a redirect
    leads to another host."""
    parts = urlsplit(url)
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=_host(parts))))
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_unredirected_header(
            "Authorization", f"Basic {base64.b64encode(token).decode()}"
        )
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if if_range:
            request.add_header("If-Range", if_range)
    return request


def _validator_file(part: Path) -> Path:
    """Where the ETag/Last-Modified of the response that started ``part`` are kept."""
    return part.with_name(f".{part.name}.validator.json")


def _if_range(part: Path) -> str | None:
    """The If-Range value saved beside ``part``: a strong ETag, else the Last-Modified date
    (a weak ETag cannot be used for ranges)."""
    try:
        saved = json.loads(_validator_file(part).read_text())
    except (OSError, ValueError):
        return None
    etag = saved.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return saved.get("last_modified")


def _host(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def _fetch_http(
    url: str,
    part: Path,
    checked: bool,
    progress: bool,
    retries: int,
    backoff_s: float,
    timeout_s: float,
) -> None:
    """Fetch ``url`` into ``part``, retrying; a part is continued only under If-Range, or
    without a saved validator when ``checked`` (an md5 will catch a mismatch)."""
    dest = part.with_name(part.name.removesuffix(".part"))
    failures = 0
    while True:
        if_range = _if_range(part)
        if part.is_file() and if_range is None and not checked:
            log.info("%s: no ETag or date saved for it; starting over", part)
            part.unlink()
        before = part.stat().st_size if part.is_file() else 0
        try:
            _transfer(url, part, before, if_range, progress, timeout_s)
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in _RETRY_STATUS:
                problem = f"{redact_url(url)} answered HTTP {exc.code} {exc.reason}"
                raise DataError(dest, problem) from exc
            error: Exception = exc
        except (urllib.error.URLError, HTTPException, OSError, _Interrupted) as exc:
            error = exc
        now = part.stat().st_size if part.is_file() else 0
        failures = 0 if now > before else failures + 1
        if failures > retries:
            problem = f"giving up on {redact_url(url)} after {retries} retries: {error}"
            raise DataError(dest, problem)
        wait = min(backoff_s * 2 ** max(failures - 1, 0), 300.0)
        log.warning("%s: %s; retrying from byte %d in %.0f s", redact_url(url), error, now, wait)
        time.sleep(wait)


def _transfer(
    url: str, part: Path, offset: int, if_range: str | None, progress: bool, timeout_s: float
) -> None:
    """One request; appends to ``part`` when the server honours Range (and the If-Range
    validator still matches), else starts over and saves the new response's validator."""
    try:
        response = urllib.request.urlopen(_request(url, offset, if_range), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        # Range not satisfiable: the part is complete when its size is the remote size.
        total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
        if total.isdigit() and int(total) == offset:
            return
        part.unlink()
        raise _Interrupted(f"local part ({offset} bytes) does not fit the remote file") from exc
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DataError(
                part.with_name(part.name.removesuffix(".part")),
                f"{redact_url(url)} answered with an HTML page, not the file "
                "(a login or error page?); check the URL or the mirror",
            )
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        start = offset if response.status == 206 else 0
        if response.status == 206:
            first = (response.headers.get("Content-Range") or "").removeprefix("bytes ")
            if not first.split("-")[0].isdigit() or int(first.split("-")[0]) != offset:
                part.unlink()
                raise _Interrupted(f"server answered range {first!r} for bytes={offset}-")
        else:
            if offset:
                log.info("%s: remote file changed or Range ignored; restarting", redact_url(url))
            headers = response.headers
            validator = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}
            write_json_atomic(_validator_file(part), validator)
        total = start + length if length is not None else None
        received = start
        with (
            open(part, "ab" if start else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
                disable=not (progress and sys.stderr.isatty()),
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def fetch_dataset(
    dataset: str, data_root: Path, *, mirror: str | None = None, progress: bool = True
) -> Path:
    """Download, verify and install every file of ``dataset``; return the ready marker.

    ``mirror`` replaces each URL by ``<mirror>/<dataset>/<name>`` (an internal mirror, or a
    local test server). Reruns skip verified downloads and already installed archives.
    """
    source = get_source(dataset)
    if source.manual is not None:
        raise ValueError(f"{dataset} cannot be fetched automatically; use check_manual()")
    data_root = Path(data_root)
    archives = data_root / "archives" / dataset
    fetched = [
        (f, download(_url(f, dataset, mirror), archives / f.name, md5=f.md5, progress=progress))
        for f in source.files
    ]
    return _install_all(source, fetched, data_root, origin="download")


def _url(remote: RemoteFile, dataset: str, mirror: str | None) -> str:
    if mirror is None:
        return remote.url
    return f"{mirror.rstrip('/')}/{dataset}/{quote(remote.name)}"


def check_manual(dataset: str, data_root: Path) -> Path:
    """Install a source placed by hand, or explain exactly what to place where.

    Accepts either all expected archives in ``<data_root>/archives/<dataset>/`` (md5-checked
    where published, then extracted) or an already extracted layout in ``<data_root>/<dataset>/``.
    """
    source = get_source(dataset)
    if source.manual is None:
        raise ValueError(f"{dataset} is downloaded automatically; use fetch_dataset()")
    data_root = Path(data_root)
    archives = data_root / "archives" / dataset
    target = data_root / dataset
    manual = source.manual
    missing = [f for f in manual.files if not (archives / f.name).is_file()]
    if not missing:
        placed = []
        for f in manual.files:
            verify_file(archives / f.name, f.md5)
            placed.append((f, archives / f.name))
        return _install_all(source, placed, data_root, origin="archives placed by hand")
    if all((target / entry).exists() for entry in manual.layout):
        log.info("%s: accepting the extracted layout in %s", dataset, target)
        return write_ready_marker(
            target, dataset, origin="extracted by hand", files=list(manual.layout), md5={}
        )
    raise ManualDownloadRequired(archives, _manual_message(source, archives, target, missing))


def _manual_message(source: Source, archives: Path, target: Path, missing: list[RemoteFile]) -> str:
    """What the user must download, from where, and into which folder."""
    manual = source.manual
    if manual is None:
        raise ValueError(f"{source.name} has no manual instructions")
    lines = [
        f"{source.title} must be downloaded by hand. {manual.how}",
        f"Source: {manual.url}",
        f"Put these files into {archives}/ :",
    ]
    for f in manual.files:
        state = "missing" if f in missing else "present"
        md5 = f", md5 {f.md5}" if f.md5 else ""
        lines.append(f"  {f.name} ({state}{md5})")
    s3 = [f for f in missing if f.url.startswith("s3://")]
    if s3:
        lines.append("With the AWS CLI:")
        lines += [f"  aws s3 cp {f.url} {archives}/{f.name}" for f in s3]
    lines.append(
        f"or extract them yourself so that {target}/ contains: {', '.join(manual.layout)}."
    )
    return "\n".join(lines)


def prepare(
    dataset: str, data_root: Path, *, mirror: str | None = None, progress: bool = True
) -> Path:
    """Make ``<data_root>/<dataset>/`` complete and return its ready marker.

    Automatic sources are downloaded; manual ones are checked, after fetching them from
    ``mirror`` when one is given (an internal mirror may hold gated archives too).
    """
    source = get_source(dataset)
    if source.manual is None:
        return fetch_dataset(dataset, data_root, mirror=mirror, progress=progress)
    if mirror is not None:
        archives = Path(data_root) / "archives" / dataset
        for f in source.manual.files:
            download(_url(f, dataset, mirror), archives / f.name, md5=f.md5, progress=progress)
    return check_manual(dataset, data_root)


def _install_all(
    source: Source, files: list[tuple[RemoteFile, Path]], data_root: Path, *, origin: str
) -> Path:
    target = data_root / source.name
    md5s = {f.name: _install(f, path, target) for f, path in files}
    return write_ready_marker(
        target, source.name, origin=origin, files=[f.name for f, _ in files], md5=md5s
    )


def _install(remote: RemoteFile, path: Path, target: Path) -> str:
    """Extract or copy one verified file into ``target`` unless a previous run already did;
    return its md5. The per-file record is written only after the content is in place."""
    md5 = file_md5(path)
    record = target / INSTALLED_DIR / f"{remote.name}.json"
    try:
        if json.loads(record.read_text()).get("md5") == md5:
            return md5
    except (OSError, ValueError, AttributeError):
        pass
    where = target / remote.subdir if remote.subdir else target
    if remote.extract:
        log.info("extracting %s into %s", path.name, where)
        try:
            safe_extract(path, where, within=target)
        except DataError as exc:
            if remote.md5 is not None:
                raise  # the provider's own file: fetching it again would not help
            bad = quarantine(path)
            raise type(exc)(exc.path, f"{exc.problem}; moved to {bad}, fetch it again") from exc
    else:
        require_real_folder(where, target)
        where.mkdir(parents=True, exist_ok=True)
        with atomic_path(where / remote.name) as tmp:
            shutil.copyfile(path, tmp)
    write_json_atomic(record, {"file": remote.name, "md5": md5, "installed": time.time()})
    return md5
