"""MLflow tracking: one experiment per dataset, one run per (model, classifier, seed).

Every stage of a run (train, evaluate, profile) writes into the same MLflow run: its id travels
in ``<run_dir>/mlflow_run_id.txt`` next to the checkpoint. Only rank 0 of a distributed job
tracks (:class:`NullTracker` elsewhere).

The default store is a local SQLite file. Two processes creating a fresh SQLite store at once
crash (both run MLflow's table migrations), and two processes creating the same experiment at
once collide on its unique name. Both are made safe for any number of simultaneous first users:
the store is created under a file lock (``<db>.lock``, :func:`init_store`, which every tracker
calls before its first use), and an experiment that another process created first is used, not
an error (:func:`experiment_id`). Snakemake's ``init_tracking`` rule additionally creates the
store and every experiment of the DAG before parallel jobs start. The store is switched to
write-ahead logging, so that local jobs running side by side read while one writes (writers
queue on SQLite's busy timeout).

On a cluster, many jobs must not write one SQLite file on a network filesystem (its locks do
not hold there, and WAL needs shared memory): start a server on the login node and point
``tracking.uri`` at it. The server is the only process that touches its store::

    python -m ssaseg tracking-server --host 10.0.0.5 --port 5000 \
        --backend-store sqlite:////local/mlflow/mlflow.db --artifacts /shared/mlartifacts
    # params: tracking: {uri: http://10.0.0.5:5000}
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssaseg import atomic_io
from ssaseg.errors import MissingFileError, UnavailableError

RUN_ID_FILE = "mlflow_run_id.txt"


def _client(uri: str):
    import mlflow  # slow import: only where tracking happens
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def init_store(uri: str, experiments: Iterable[str] = ()) -> None:
    """Create the tracking store if needed, then each of ``experiments``; safe to call again and
    from many processes at once. A SQLite store is created under a file lock beside it and
    switched to write-ahead logging (a property of the file, kept by every later process)."""
    path = sqlite_path(uri)
    if path is None:  # a server (or database) creates its own store
        client = _client(uri)
    else:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        # Every process takes the lock around its first use of the store: MLflow runs its table
        # migrations when it finds no tables, and two doing so at once crash ("duplicate column").
        with FileLock(f"{path}.lock", timeout=600):
            client = _client(uri)
            client.search_experiments(max_results=1)  # creates the tables on a fresh file
            import sqlite3

            with sqlite3.connect(path, timeout=60) as db:
                db.execute("PRAGMA journal_mode=WAL")
    for name in experiments:
        experiment_id(client, name)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created if it does not exist. Another process may create it
    between our look-up and our create: its "already exists" is then the answer, not an error."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:  # the create failed for another reason
                raise
    if found.lifecycle_stage != "active":
        raise UnavailableError(f"MLflow experiment {name!r} is deleted; restore it (`mlflow "
                               f"experiments restore --experiment-id {found.experiment_id}`) or "
                               "purge it (`mlflow gc`) before tracking runs in it")
    return found.experiment_id


def server_command(host: str, port: int, backend_store: str, artifacts: str,
                   workers: int | None = None, allowed_hosts: str | None = None) -> list[str]:
    """``mlflow server`` bound to ``host:port``, serving (proxying) the artifacts too, so that
    jobs need no access to the artifact directory. Host headers accepted by default: ``host``,
    this machine's names and localhost, each with and without the port."""
    import socket

    if allowed_hosts is None:
        names = dict.fromkeys([host, socket.gethostname(), socket.getfqdn(), "localhost",
                               "127.0.0.1"])
        allowed_hosts = ",".join(f"{n},{n}:{port}" for n in names if n and n != "0.0.0.0")
    if workers is None:  # one writer for SQLite
        workers = 1 if backend_store.startswith("sqlite:") else 4
    return ["mlflow", "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend_store, "--serve-artifacts",
            "--artifacts-destination", artifacts, "--workers", str(workers),
            "--allowed-hosts", allowed_hosts]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1}} -> {'train.lr': '1'} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class RunTracker:
    """The MLflow run of one experiment run directory; created on first use, then re-opened."""

    def __init__(self, uri: str, run_dir: str | Path, experiment: str | None = None,
                 run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        if uri.startswith("sqlite:") and os.environ.get("SLURM_JOB_ID"):
            import warnings

            warnings.warn(f"tracking.uri is the SQLite file {uri} inside Slurm job "
                          f"{os.environ['SLURM_JOB_ID']}: jobs on several nodes must not share "
                          "one SQLite file; start `python -m ssaseg tracking-server` on the "
                          "login node and set tracking.uri: http://<host>:<port>", stacklevel=2)
        init_store(uri)
        self.client = _client(uri)
        id_file = Path(run_dir) / RUN_ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        if experiment is None:
            raise MissingFileError(
                f"{id_file} not found: train this run first (it creates the MLflow run)"
            )
        run = self.client.create_run(experiment_id(self.client, experiment), run_name=run_name, tags=dict(tags or {}))
        self.run_id = run.info.run_id
        if params:
            self.log_params(params)
        atomic_io.write_text(id_file, self.run_id + "\n")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def last_logged_step(self, key: str) -> int:
        """The highest step of metric ``key`` in this run, 0 when it has none. A resumed
        training run replays the iterations after its checkpoint; those up to this step were
        logged before it stopped and are not logged again."""
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Stands in for :class:`RunTracker` on non-zero ranks."""

    run_id = None

    def last_logged_step(self, key: str) -> int:
        return 0

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def device_tag() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{os.cpu_count()} cores"
