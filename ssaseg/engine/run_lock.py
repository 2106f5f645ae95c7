"""One trainer per run directory.

Two processes training the same run would both write ``last.pt`` and ``model.pt`` and open
two MLflow runs, one of them orphaned. :class:`RunLock` holds an exclusive lock on
``<run_dir>/.train.lock`` (``flock`` through :mod:`filelock`: the kernel releases it when the
holder exits, however it exits, so a killed trainer never leaves a stale lock) and records who
holds it in ``<run_dir>/.train.lock.owner``, which a second trainer names in its error.

Taking the run lock and writing the owner file are one step for everyone else: both happen
while holding a second, short-lived lock (``.train.lock.guard``) that a process also holds
while it tries the run lock, reads the owner file, or clears it. So a process that finds the
run taken always reads the owner of that moment, never a file not yet written or just removed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ssaseg import atomic_io
from ssaseg.errors import InputError

LOCK_FILE = ".train.lock"
OWNER_FILE = ".train.lock.owner"
GUARD_FILE = ".train.lock.guard"


class RunLockedError(InputError, RuntimeError):
    """Another process is training this run directory; the message says which one."""


class RunLock:
    """``with RunLock(run_dir):`` - train inside; raises :class:`RunLockedError` at once (no
    waiting) when another process holds the run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(self.run_dir / LOCK_FILE, timeout=0)
        self._guard = FileLock(self.run_dir / GUARD_FILE, timeout=60)  # held for milliseconds

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._guard:
            try:
                self._lock.acquire()
            except Timeout:
                raise RunLockedError(
                    f"{self.run_dir} is being trained by {self.holder()}; wait for it to finish "
                    "(or stop that process) before training this run again"
                ) from None
            atomic_io.write_json(self.run_dir / OWNER_FILE, {
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv),
            })
        return self

    def __exit__(self, *exc) -> None:
        with self._guard:
            (self.run_dir / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def holder(self) -> str:
        """Who holds the run lock, as its owner file says (read under the guard lock)."""
        try:
            owner = json.loads((self.run_dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return "another process (its owner file is unreadable)"
        return (f"process {owner['pid']} on {owner['host']} since {owner['since']} "
                f"(`{owner['command']}`)")
