"""MLflow tracking: one experiment per dataset, one run per (model, classifier, seed).

Every stage of a run (train, evaluate, profile) writes into the same MLflow run: its id travels
in ``<run_dir>/mlflow_run_id.txt`` next to the checkpoint. Only rank 0 of a distributed job
tracks (:class:`NullTracker` elsewhere).

The default store is a local SQLite file. Two processes creating a fresh SQLite store at once
crash, so :func:`init_store` is run once, before parallel jobs start (Snakemake's
``init_tracking`` rule). On a cluster, point ``tracking.uri`` at a server instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssaseg import atomic_io

RUN_ID_FILE = "mlflow_run_id.txt"


def _client(uri: str):
    import mlflow  # slow import: only where tracking happens
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def init_store(uri: str) -> None:
    """Create the tracking store (SQLite tables) if needed; safe to call again."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    _client(uri).search_experiments(max_results=1)


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
        self.client = _client(uri)
        id_file = Path(run_dir) / RUN_ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        if experiment is None:
            raise FileNotFoundError(
                f"{id_file} not found: train this run first (it creates the MLflow run)"
            )
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
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

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def device_tag() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{os.cpu_count()} cores"
