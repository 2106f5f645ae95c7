"""Download dataset archives: resumable, verified, atomic.

    python -m ssaseg download --dataset ade20k   # -> data/raw/ade20k/ADEChallengeData2016.zip

* Resume: bytes arrive in ``<file>.part``; a later attempt (a retry, or the next run) asks for
  the rest with an HTTP ``Range`` request. A server that ignores ``Range`` restarts the file.
  A body shorter than its length (Content-Length, the Content-Range total, or the catalog's
  size) is a dropped connection; a body without any length is followed by one more ``Range``
  request for what comes after it, which a 416 answer confirms as the end.
* A ``.part`` already there when a download starts is of unknown origin: the file completed
  from it is installed only if it verifies, else it is moved aside and the whole file is
  downloaded again once.
* Retries: network errors and 5xx answers are retried with exponential back-off
  (``backoff * 2**n`` seconds, at most ``max_backoff``); the count restarts whenever an
  attempt made progress, so a connection that keeps dropping still finishes.
* Verification: size (when known) and every published digest (md5/sha1/sha256, see the
  catalog). Where none is published, every member of the zip/tar is read before anything is
  recorded (zip: each member against its CRC-32; tar: each member to its full size, the
  end-of-archive marker, and a compressed stream's own checksum), and only then is the sha256
  recorded in ``<file>.sha256`` (``sha256sum`` format); later runs check against that record.
* Atomic: the finished ``.part`` is renamed to its final name only after it verifies.
* A file that fails verification is moved aside to ``<file>.corrupt-<UTC timestamp>`` (kept
  for inspection, never re-used) and the download stops with a :class:`ChecksumError`; an
  existing file that fails is moved aside the same way and downloaded again.
* An existing file that verifies is not downloaded again (no request is made).
* Datasets behind a login (Cityscapes) are never fetched: the step checks the files the user
  put in place, or explains exactly which files to put where (:class:`ManualDownloadRequired`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ssaseg.data.catalog import Archive, DatasetInfo, get_dataset
from ssaseg.data.layout import DatasetError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "ssaseg-download/1.0 (+https://github.com/; research benchmark)"
RECORD_SUFFIX = ".sha256"


class DownloadError(DatasetError):
    """A download failed for good (after retries); the message says what to do."""


class ChecksumError(DownloadError):
    """A file does not match its published or recorded checksum/size; it was moved aside."""

    def __init__(self, message: str, moved_to: Path | None = None) -> None:
        super().__init__(message)
        self.moved_to = moved_to


class ManualDownloadRequired(DownloadError):
    """The dataset needs a login: the user must put the archives in place by hand."""


class _Retryable(Exception):
    """A transient failure of one attempt (network error, dropped connection, 5xx)."""


# --- verification --------------------------------------------------------------------------


def file_digests(path: Path, algorithms: list[str]) -> dict[str, str]:
    """Hex digests of ``path`` for each hashlib algorithm, in one pass over the file."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def read_record(path: Path) -> str | None:
    """The sha256 recorded for ``path`` on its first download, if any."""
    record = _record_path(path)
    if not record.is_file():
        return None
    text = record.read_text().strip().split()
    return text[0].lower() if text else None


def write_record(path: Path, sha256: str) -> None:
    from ssaseg import atomic_io

    atomic_io.write_text(_record_path(path), f"{sha256}  {path.name}\n")


def move_aside(path: Path, name: str | None = None) -> Path:
    """Rename a bad file to ``<name>.corrupt-<UTC timestamp>`` beside it (``name`` defaults
    to the file's own); return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{name or path.name}.corrupt-{stamp}")
    os.replace(path, target)
    return target


def _tar_problem(path: Path, compressed: bool) -> str | None:
    """Read every member of a tar to its end; None if the archive is whole."""
    if not compressed and path.stat().st_size % tarfile.BLOCKSIZE:
        return "size is not a whole number of tar blocks (truncated)"
    with tarfile.open(path) as t:
        for member in t:
            if not member.isfile():
                continue
            handle, left = t.extractfile(member), member.size
            while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                left -= len(chunk)
            if left:
                return f"member {member.name!r} is truncated (truncated or corrupt download)"
        if compressed:  # the rest of the stream: gzip/bz2/xz check their CRC at its end
            while t.fileobj.read(CHUNK):
                pass
            return None
        # Python's tarfile takes the end of the file, or an unreadable header, for the end
        # of the archive: require the end-of-archive marker (zero blocks) where it stopped.
        with open(path, "rb") as raw:
            raw.seek(t.offset)
            marker = raw.read(2 * tarfile.BLOCKSIZE)
        if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
            return (f"no end-of-archive marker at byte {t.offset} (truncated between two "
                    "members, or a damaged header)")
    return None


def _whole_archive_problem(path: Path, filename: str) -> str | None:
    """Why archive ``path`` (to be named ``filename``) is not whole, or None: every member is
    read to its end (zip: each checked against its CRC-32; tar: each read to its full size,
    compressed streams to their checksummed end). Opening an archive reads only its directory,
    which a file damaged or truncated in the middle still has."""
    name = filename.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # reads every member, checks its CRC-32
            if bad is not None:
                return f"member {bad!r} is corrupt (CRC-32 mismatch or unreadable data)"
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            return _tar_problem(path, compressed=not name.endswith(".tar"))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError,
            NotImplementedError, zlib.error) as err:
        return f"cannot be opened or read ({err}): truncated or corrupt"
    return None


def verify(path: Path, archive: Archive, *, target: Path | None = None,
           record: bool = True) -> str:
    """Check ``path`` against ``archive``'s size and digests, and against the sha256 recorded
    for ``target`` (default: ``path``) on its first download.

    Returns the file's sha256. Raises :class:`ChecksumError` (the file is not touched: the
    caller decides whether to move it aside). With ``record``, the sha256 of a file that
    passes is recorded for ``target`` if nothing was recorded yet.
    """
    target = target or path
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise ChecksumError(f"{path}: {size} bytes, expected {archive.size}")
    published = archive.checksums
    digests = file_digests(path, sorted(set(published) | {"sha256"}))
    for algo, expected in published.items():
        if digests[algo] != expected:
            raise ChecksumError(
                f"{path}: {algo} is {digests[algo]}, expected {expected} "
                f"({archive.checksum_source or 'catalog'})"
            )
    recorded = read_record(target)
    if recorded is not None and recorded != digests["sha256"]:
        raise ChecksumError(
            f"{path}: sha256 is {digests['sha256']}, but {recorded} was recorded in "
            f"{_record_path(target).name} when it was first downloaded (delete that record "
            "only if the file legitimately changed upstream)"
        )
    if not published and recorded is None:  # nothing to compare with: check it is whole
        if archive.extract:
            log.info("%s: no published checksum; reading every member before trusting it",
                     target.name)
            if problem := _whole_archive_problem(path, archive.filename):
                raise ChecksumError(f"{path}: {problem}")
        if record:
            log.info("%s: no published checksum; recording sha256 %s", target.name,
                     digests["sha256"])
    if record and recorded is None:
        write_record(target, digests["sha256"])
    return digests["sha256"]


# --- HTTP ----------------------------------------------------------------------------------


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_once(url: str, part: Path, *, timeout: float, progress: bool, desc: str,
                expected_size: int | None, confirming: bool = False) -> bool:
    """One attempt: continue ``part`` from its current size to the end of the resource.

    Returns False when the body ended with the connection and nothing said how long the file
    is (no Content-Length, no Content-Range total, no catalog size): a dropped connection
    looks the same, so the caller asks again for what follows (``confirming``); a 416 answer
    then confirms the end, more bytes continue the file.
    """
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset == expected_size:
        return True
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete or bad
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total is not None and total == offset:
                return True
            if confirming and total is None:  # nothing after the bytes we have
                return True
            log.warning("%s: server refused to resume at byte %d; restarting", desc, offset)
            part.unlink()
            raise _Retryable(f"HTTP 416 at offset {offset}") from err
        if err.code >= 500 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
            TimeoutError) as err:
        raise _Retryable(str(getattr(err, "reason", err))) from err

    asked_from = offset
    with response:
        status = response.status
        if status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Retryable(f"server resumed at byte {start}, asked for {offset}")
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("%s: server does not support resuming; starting over", desc)
            offset, mode = 0, "wb"
        else:
            raise _Retryable(f"unexpected HTTP status {status}")
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        range_total = (_total_from_content_range(response.headers.get("Content-Range"))
                       if status == 206 else None)
        total = (offset + remaining) if remaining is not None else (range_total or expected_size)
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"{url}: server says {total} bytes, the catalog expects {expected_size}; the "
                "file changed upstream or the URL is wrong"
            )
        bar = _progress_bar(total, offset, desc, progress)
        received = 0
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as err:
                        raise _Retryable(f"connection lost after {offset + received} bytes "
                                         f"({err!r})") from err
                    if not chunk:
                        break
                    try:
                        handle.write(chunk)
                    except OSError as err:
                        raise DownloadError(
                            f"cannot write {part} ({err.strerror or err}); free space and run "
                            f"the download again: it resumes from the {offset + received} "
                            "bytes already there"
                        ) from err
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if total is not None:
            if offset + received < total:
                raise _Retryable(f"connection closed after {offset + received} of {total} bytes")
            return True
        if status == 200 and asked_from:
            # the server ignores Range: it cannot be asked what follows; verification decides
            return True
        return confirming and received == 0  # asked for more and got none: that was the end


def _start_from_content_range(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _total_from_content_range(value: str | None) -> int | None:
    match = re.search(r"/(\d+)$", value or "")
    return int(match.group(1)) if match else None


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not enabled, mininterval=0.5, leave=True,
                dynamic_ncols=True)  # the default bar shows rate and ETA


def _fetch_with_retries(url: str, part: Path, expected_size: int | None, *, desc: str,
                        retries: int, backoff: float, max_backoff: float, timeout: float,
                        progress: bool, sleep: Callable[[float], None]) -> None:
    """Complete ``part`` from its current size, retrying transient failures with back-off."""
    failures, confirming = 0, False
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            if _fetch_once(url, part, timeout=timeout, progress=progress, desc=desc,
                           expected_size=expected_size, confirming=confirming):
                return
            if not confirming:
                log.info("%s: the server sent no length; asking for the bytes after %d to "
                         "confirm the end", desc, part.stat().st_size if part.exists() else 0)
            confirming = True
        except _Retryable as err:
            confirming = False
            after = part.stat().st_size if part.exists() else 0
            failures = 1 if after > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{url}: giving up after {retries} retries ({err}); {after} bytes are kept "
                    f"in {part} and the next run resumes from there"
                ) from err
            delay = min(max_backoff, backoff * 2 ** (failures - 1))
            log.warning("%s: %s; retrying in %.1f s", desc, err, delay)
            sleep(delay)


def download_file(url: str, dest: str | Path, archive: Archive | None = None, *,
                  retries: int = 5, backoff: float = 2.0, max_backoff: float = 60.0,
                  timeout: float = 60.0, progress: bool = True,
                  sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest``; see the module docstring for the guarantees.

    ``archive`` carries the expected size and digests (default: none known). Returns
    ``dest``. Raises :class:`ChecksumError` (file moved aside) or :class:`DownloadError`.
    """
    dest = Path(dest)
    archive = archive or Archive(url=url, filename=dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify(dest, archive)
            log.info("%s already present and verified; not downloading", dest)
            return dest
        except ChecksumError as err:
            moved = move_aside(dest)
            log.warning("%s; moved it to %s and downloading again", err, moved.name)

    part = dest.with_name(dest.name + ".part")
    # Bytes already in the .part come from an earlier run, or from anything else that wrote
    # that name (another tool, another version of the file): they are of unknown origin. A
    # file completed from them is installed only if it verifies; if it does not, it is kept
    # aside and the whole file is downloaded once more from its first byte.
    attempts = 2 if part.is_file() and part.stat().st_size else 1
    for attempt in range(attempts):
        _fetch_with_retries(url, part, archive.size, desc=dest.name, retries=retries,
                            backoff=backoff, max_backoff=max_backoff, timeout=timeout,
                            progress=progress, sleep=sleep)
        try:
            sha256 = verify(part, archive, target=dest, record=False)
            break
        except ChecksumError as err:
            moved = move_aside(part, dest.name)
            if attempt + 1 < attempts:
                log.warning("%s; it was completed from a %s already there (kept as %s): "
                            "downloading the whole file again", err, part.name, moved.name)
                continue
            raise ChecksumError(
                f"{err}. The download is corrupt; it was kept as {moved} (delete it when done "
                "looking) and nothing was installed. Run the download again; if it fails the "
                "same way, the file changed upstream: report it.",
                moved_to=moved,
            ) from None
    os.replace(part, dest)
    if read_record(dest) is None:
        write_record(dest, sha256)  # the record later runs verify against
    return dest


# --- datasets ------------------------------------------------------------------------------


def raw_dir_for(name: str, data_root: str | Path = "data") -> Path:
    """Where a dataset's downloaded archives live by default: ``<data_root>/raw/<name>``."""
    return Path(data_root) / "raw" / name


def _mirror_url(archive: Archive, mirror: str | None) -> str:
    if not mirror:
        return archive.url
    return mirror.rstrip("/") + "/" + archive.filename


def archive_paths(dataset: str | DatasetInfo, raw_dir: str | Path) -> list[Path]:
    """Where ``dataset``'s archives go in ``raw_dir`` (empty for the synthetic dataset)."""
    info = get_dataset(dataset) if isinstance(dataset, str) else dataset
    return [Path(raw_dir) / a.filename for a in info.archives]


def download_archive(dataset: str | DatasetInfo, filename: str, raw_dir: str | Path, *,
                     mirror: str | None = None, **options) -> Path:
    """Fetch and verify one archive of ``dataset`` (one Snakemake job per archive); for a
    dataset behind a login (and no ``mirror``), verify the file the user placed instead."""
    info = get_dataset(dataset) if isinstance(dataset, str) else dataset
    archive = info.archive(filename)
    raw_dir = Path(raw_dir)
    if info.needs_login and not mirror:
        raw_dir.mkdir(parents=True, exist_ok=True)
        return _verify_present(info, archive, raw_dir)
    return download_file(_mirror_url(archive, mirror), raw_dir / archive.filename, archive,
                         **options)


def download_dataset(dataset: str | DatasetInfo, raw_dir: str | Path, *,
                     mirror: str | None = None, **options) -> list[Path]:
    """Fetch and verify every archive of ``dataset`` into ``raw_dir``; returns their paths.

    ``mirror``: a base URL that serves the archives under their file names (a lab mirror;
    also allowed for datasets behind a login, whose terms the user has accepted). Other
    ``options`` go to :func:`download_file` (retries, backoff, timeout, progress).
    Archives already present and verified are not fetched again.
    """
    info = get_dataset(dataset) if isinstance(dataset, str) else dataset
    if info.needs_login and not mirror:
        return verify_archives(info, raw_dir)
    return [download_archive(info, a.filename, raw_dir, mirror=mirror, **options)
            for a in info.archives]


def verify_archives(dataset: str | DatasetInfo, raw_dir: str | Path) -> list[Path]:
    """Check that every archive of ``dataset`` is in ``raw_dir`` and verifies (a file that
    does not is moved aside: :class:`ChecksumError`). A missing file is a
    :class:`ManualDownloadRequired` saying exactly which files to put where (datasets behind
    a login) or a :class:`DownloadError` saying to run the download step."""
    info = get_dataset(dataset) if isinstance(dataset, str) else dataset
    raw_dir = Path(raw_dir)
    if info.needs_login:
        raw_dir.mkdir(parents=True, exist_ok=True)  # the folder the user drops files into
    missing = [a for a in info.archives if not (raw_dir / a.filename).is_file()]
    if missing:
        raise _missing_error(info, raw_dir, missing)
    return [_verify_present(info, a, raw_dir) for a in info.archives]


def _missing_error(info: DatasetInfo, raw_dir: Path, missing: list[Archive]) -> DownloadError:
    lines = "\n".join(
        f"  {(raw_dir / a.filename).resolve()}   ({a.approx_size or 'size unknown'}; {a.url})"
        for a in missing
    )
    if info.needs_login:
        return ManualDownloadRequired(
            f"{info.title} cannot be downloaded automatically.\n{info.login_instructions}\n"
            f"Missing files:\n{lines}"
        )
    return DownloadError(
        f"{info.title}: missing files:\n{lines}\n"
        f"Run `python -m ssaseg download --dataset {info.name}`."
    )


def _verify_present(info: DatasetInfo, archive: Archive, raw_dir: Path) -> Path:
    path = raw_dir / archive.filename
    if not path.is_file():
        raise _missing_error(info, raw_dir, [archive])
    try:
        verify(path, archive)
    except ChecksumError as err:
        moved = move_aside(path)
        how = "download it again (while logged in)" if info.needs_login else \
            "run the download step again"
        raise ChecksumError(f"{err}. It was moved to {moved}; {how} and put it at {path}",
                            moved_to=moved) from None
    return path
