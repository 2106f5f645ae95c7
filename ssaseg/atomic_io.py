"""Write files and directories so that a killed process never leaves a half-written one behind
looking complete: write to a temporary name beside the target, then rename over it.

Temporary names are ``.<target name>.<host>-<pid>.<random>.tmp``: they say which process
writes them. Each new write of a target first removes the temporaries an earlier, killed
writer of the same target left behind (:func:`remove_stale_temporaries`), so a killed
``torch.save`` of a large checkpoint does not keep its gigabytes forever.

Permissions: temporaries are created with mode 0o666 (files) / 0o777 (directories) minus the
process umask, as ``open``/``mkdir`` would create the target itself, not with
``tempfile.mkstemp``'s 0o600 / ``mkdtemp``'s 0o700, so that with umask 022 the next user of a
shared cluster can read what the pipeline wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A temporary whose writer runs on another host (a shared file system), or that comes from a
# version that did not put the writer in the name, is removed only once nothing in it changed
# for this long: a live writer keeps touching what it writes, a killed one does not.
FOREIGN_STALE_AFTER_S = 24 * 3600

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
_OURS = re.compile(r"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
_LEGACY = re.compile(r"[a-z0-9_]{8}\.tmp")  # tempfile.mkstemp/mkdtemp names of older versions


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything under it (a directory's own mtime
    does not change when files deep inside it are written)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _is_stale(path: Path, rest: str) -> bool:
    """Whether the temporary ``path`` (its name after ``.<target>.`` is ``rest``) belongs to a
    writer that no longer runs.

    Same host: its PID is not alive (a live PID, even one reused by an unrelated process,
    keeps it: never remove the temporary of a concurrently running writer). Another host or
    an older name without a PID: untouched for :data:`FOREIGN_STALE_AFTER_S`.
    """
    ours = _OURS.fullmatch(rest)
    if ours is None and _LEGACY.fullmatch(rest) is None:
        return False  # not a temporary of this target (e.g. of ``<target>.<suffix>``)
    if ours is not None and ours["host"] == _HOST:
        return not _pid_alive(int(ours["pid"]))
    try:
        return time.time() - _newest_mtime(path) > FOREIGN_STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporaries of ``target`` whose writers were killed; returns what went."""
    target = Path(target)
    prefix = f".{target.name}."
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.name.endswith(".tmp"):
            continue
        path = Path(entry.path)
        if not _is_stale(path, entry.name[len(prefix):]):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another run of the same step removed it first
            continue
        except OSError as err:
            log.warning("cannot remove the stale temporary %s: %s", path, err)
            continue
        log.info("removed %s, left by a killed write of %s", path, target)
        removed.append(path)
    return removed


def _new_temporary(target: Path, directory: bool) -> Path:
    """Create an empty temporary file or directory beside ``target`` (umask-given mode)."""
    while True:
        tmp = _temporary_name(target)
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a directory
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp_path = _new_temporary(target, directory=False)
    try:
        yield tmp_path
        _fsync(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, target)
        _fsync(target.parent, directory=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``.

    On failure the temporary directory is removed and an existing ``target`` is left untouched.
    The swap is two renames (the old copy to a temporary name, the new one to ``target``): at
    any moment ``target`` is the complete old copy, the complete new one, or (if killed between
    the two renames) absent, never a mixture.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    shutil.rmtree(target.with_name(f".{target.name}.old"), ignore_errors=True)  # older versions'
    tmp = _new_temporary(target, directory=True)
    try:
        yield tmp
        if target.exists():
            old = _temporary_name(target)  # ours: removed below, or as stale if killed here
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
