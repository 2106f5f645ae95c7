"""Version ``data/`` with DVC: ``data.dvc`` at the repository root records it, ``dvc push``
stores the bytes on a remote, and a new machine gets the same bytes with ``dvc pull``.

DVC only versions data here (no ``dvc.yaml`` stages: Snakemake owns the pipeline). DVC runs
as ``python -m dvc`` of the current interpreter, so the venv's DVC is the one used.

    from ssaseg.data.versioning import version_data, pull_data
    version_data(".", remote="storage")                      # dvc add data + dvc push -r storage
    pull_data(".", remote="storage")                         # on a new machine
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from ssaseg.data.layout import DatasetError

log = logging.getLogger(__name__)


class DVCError(DatasetError):
    """A DVC command failed; the message holds its output and what to check."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")  # no network call home from a pipeline step
    return env


def run_dvc(args: list[str], repo_root: str | Path = ".", hint: str = "") -> str:
    """Run ``dvc <args>`` in ``repo_root``; return stdout, raise :class:`DVCError` on failure."""
    command = [sys.executable, "-m", "dvc", *args]
    try:
        result = subprocess.run(command, cwd=repo_root, env=_env(), capture_output=True,
                                text=True, check=False)
    except OSError as err:
        raise DVCError(f"cannot run {' '.join(command)}: {err}") from err
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise DVCError(
            f"`dvc {' '.join(args)}` failed in {Path(repo_root).resolve()} (exit "
            f"{result.returncode}):\n{output}" + (f"\n{hint}" if hint else "")
        )
    return result.stdout


def ensure_dvc_repo(repo_root: str | Path = ".") -> None:
    """``dvc init`` if ``repo_root`` has no ``.dvc/`` yet (it must be a git repository)."""
    root = Path(repo_root)
    if (root / ".dvc").is_dir():
        return
    if not (root / ".git").exists():
        raise DVCError(f"{root.resolve()} is not a git repository; DVC needs one (git init)")
    run_dvc(["init", "--quiet"], root)
    run_dvc(["config", "core.analytics", "false"], root)


def add_remote(name: str, url: str, repo_root: str | Path = ".", *, default: bool = True,
               local: bool = False) -> None:
    """Add (or update) DVC remote ``name`` -> ``url`` (a path, s3://, gs://, ssh://, ...).
    ``local=True`` writes it to ``.dvc/config.local`` (not committed: per-machine paths)."""
    ensure_dvc_repo(repo_root)
    scope = ["--local"] if local else []
    run_dvc(["remote", "add", *scope, "--force", *(["--default"] if default else []), name, url],
            repo_root)


# Never versioned inside data/: the atomic-write temporaries of an interrupted prepare or
# download. The raw archives (data/raw/) are excluded too unless include_raw=True: a new
# machine pulls the prepared datasets, which is all training needs.
TEMPORARY_PATTERNS = ("**/.*.tmp", "**/.*.old", "**/*.part")


def write_dvcignore(repo_root: str | Path, data_dir: str = "data",
                    include_raw: bool = False, raw_subdir: str = "raw") -> Path:
    """Add our patterns to ``.dvcignore`` (keeping the user's own lines)."""
    path = Path(repo_root) / ".dvcignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    wanted = [f"/{data_dir}/{p}" for p in TEMPORARY_PATTERNS]
    if not include_raw:
        wanted.append(f"/{data_dir}/{raw_subdir}/")
    missing = [w for w in wanted if w not in lines]
    if missing:
        header = ["# ssaseg: not versioned (see ssaseg/data/versioning.py)"]
        text = "\n".join(lines + ([] if header[0] in lines else header) + missing) + "\n"
        path.write_text(text)
    return path


def dvc_add(repo_root: str | Path = ".", data_dir: str = "data", *,
            include_raw: bool = False) -> Path:
    """``dvc add data``: hash ``data/`` into the DVC cache and write ``data.dvc``; returns it.

    Call it after prepare (every dataset's manifest written). ``data/raw/`` (the downloaded
    archives) is left out unless ``include_raw``."""
    root = Path(repo_root)
    if not (root / data_dir).is_dir():
        raise DVCError(f"{(root / data_dir).resolve()} does not exist; prepare a dataset first")
    ensure_dvc_repo(root)
    write_dvcignore(root, data_dir, include_raw)
    run_dvc(["add", data_dir], root,
            hint="If data/ is tracked by git, untrack it first: git rm -r --cached data")
    pointer = root / f"{data_dir}.dvc"
    if not pointer.is_file():
        raise DVCError(f"dvc add did not write {pointer}")
    return pointer


def dvc_push(repo_root: str | Path = ".", remote: str | None = None,
             data_dir: str = "data") -> None:
    """``dvc push [-r remote] data.dvc``: upload the cached bytes of ``data/``."""
    args = ["push", *(["-r", remote] if remote else []), f"{data_dir}.dvc"]
    run_dvc(args, repo_root, hint="Check the remote: `dvc remote list`, credentials, and "
            "that the remote is reachable from this machine.")


def version_data(repo_root: str | Path = ".", remote: str | None = None, *,
                 data_dir: str = "data", push: bool = True, include_raw: bool = False) -> Path:
    """``dvc add data`` then (if ``push``) ``dvc push -r <remote>``; returns ``data.dvc``.
    Commit ``data.dvc``, ``.dvcignore`` and ``.dvc/config`` with git afterwards."""
    pointer = dvc_add(repo_root, data_dir, include_raw=include_raw)
    if push:
        dvc_push(repo_root, remote, data_dir)
    return pointer


def pull_data(repo_root: str | Path = ".", remote: str | None = None,
              data_dir: str = "data") -> None:
    """``dvc pull [-r remote] data.dvc``: restore ``data/`` exactly as recorded in data.dvc."""
    root = Path(repo_root)
    if not (root / f"{data_dir}.dvc").is_file():
        raise DVCError(f"{(root / data_dir).resolve()}.dvc not found; nothing to pull "
                       "(run the download and prepare steps instead)")
    run_dvc(["pull", *(["-r", remote] if remote else []), f"{data_dir}.dvc"], root,
            hint="Check the remote: `dvc remote list` and its credentials.")
