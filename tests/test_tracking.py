"""The MLflow store and experiments under many simultaneous first users.

Every test starts its processes at a barrier, so that they really do reach the fresh store (and
the not-yet-existing experiment) at the same moment: without the file lock and the
"already exists means use it" rule, one of them dies (duplicate column / UNIQUE constraint).
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path

import pytest

from ssaseg.tracking import RunTracker, init_store

PROCESSES = 4


def _create_run(barrier, uri: str, run_dir: str, name: str, results) -> None:
    """One job's first tracker. Its first experiment look-up waits at the barrier again before
    returning, so that every process has looked the experiment up (and found none) before any
    of them creates it: the collision happens on every run of the test, not by chance."""
    from mlflow.tracking import MlflowClient

    lookup = MlflowClient.get_experiment_by_name
    first = [True]

    def look_up_then_wait(self, experiment_name):
        found = lookup(self, experiment_name)
        if first[0]:
            first[0] = False
            barrier.wait(timeout=120)
        return found

    MlflowClient.get_experiment_by_name = look_up_then_wait
    try:
        barrier.wait(timeout=120)  # every process reaches the (fresh) store at once
        tracker = RunTracker(uri, run_dir, experiment="synthetic", run_name=name,
                             tags={"who": name}, params={"train": {"iters": 1}})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.finish()
        results.put((name, "ok", tracker.run_id))
    except BaseException:  # reported to the parent, which asserts on it
        results.put((name, "failed", traceback.format_exc()))


def _start_at_barrier(target, args_per_process) -> list[tuple]:
    # forkserver with MLflow preloaded: children start in milliseconds (so the barrier releases
    # them together) and share no database connection with this process
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ssaseg", "mlflow", "mlflow.tracking", "ssaseg.tracking", "sqlalchemy"])
    barrier, results = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(barrier, *args, results))
             for args in args_per_process]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name == "synthetic"]
    assert len(experiments) == 1
    return client.search_runs([experiments[0].experiment_id])


@pytest.mark.parametrize("store_exists", [False, True], ids=["fresh-store", "initialised-store"])
def test_many_processes_create_runs_in_one_new_experiment_at_once(tmp_path, store_exists):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store_exists:  # what init_tracking leaves: tables, but not the experiment yet
        init_store(uri)
    names = [f"segformer_b0/c{i}/seed0" for i in range(PROCESSES)]
    results = _start_at_barrier(
        _create_run, [(uri, str(tmp_path / f"run{i}"), name) for i, name in enumerate(names)])
    failed = [detail for _, status, detail in results if status != "ok"]
    assert not failed, failed[0]
    runs = _runs(uri)
    assert sorted(r.info.run_name for r in runs) == sorted(names)  # each run exists once
    ids = {name: run_id for name, _, run_id in results}
    for i, name in enumerate(names):
        assert (tmp_path / f"run{i}" / "mlflow_run_id.txt").read_text().strip() == ids[name]


def test_init_store_creates_every_experiment_and_is_idempotent(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"
    init_store(uri, experiments=["synthetic", "ade20k"])
    init_store(uri, experiments=["synthetic", "ade20k"])
    names = sorted(e.name for e in MlflowClient(tracking_uri=uri).search_experiments())
    assert names == ["Default", "ade20k", "synthetic"]
    assert Path(f"{tmp_path / 'sub' / 'mlflow.db'}.lock").exists()


def test_a_deleted_experiment_is_named_not_silently_recreated(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri, experiments=["synthetic"])
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.get_experiment_by_name("synthetic").experiment_id)
    with pytest.raises(RuntimeError, match="'synthetic' is deleted; restore it"):
        RunTracker(uri, tmp_path / "run", experiment="synthetic", run_name="m/c/seed0")
