"""One trainer per run directory: the same run started several times at once trains once.

The processes meet at a barrier twice: before `train` (so that they start together) and right
after each one's attempt at the run lock (so that the winner cannot finish, and release the
lock, before every other process has tried it). The collision is thus certain, not a matter of
timing.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os

from ssaseg.config import validate_params
from ssaseg.data.prepare import prepare_dataset
from tests.conftest import write_params

PROCESSES = 3


def _train_at_barrier(barrier, params_file: str, results) -> None:
    from ssaseg import cli
    from ssaseg.engine.run_lock import RunLock, RunLockedError

    enter = RunLock.__enter__

    def enter_then_wait(self):
        try:
            held = enter(self)
        except RunLockedError:
            barrier.wait(timeout=120)
            raise
        barrier.wait(timeout=120)
        return held

    RunLock.__enter__ = enter_then_wait
    err = io.StringIO()
    barrier.wait(timeout=120)
    with contextlib.redirect_stderr(err):
        code = cli.main(["train", "--params", params_file, "--dataset", "synthetic", "--model",
                         "segformer_b0", "--classifier", "linear", "--seed", "0",
                         "--no-progress"])
    results.put((os.getpid(), code, err.getvalue()))


def test_the_same_run_started_three_times_at_once_trains_once(tmp_path, mini_params):
    from mlflow.tracking import MlflowClient

    mini_params["train"].update(iters=2, checkpoint_every=2)
    params = validate_params(mini_params)
    prepare_dataset("synthetic", "", f"{params['data_dir']}/synthetic",
                    **params["datasets"]["synthetic"]["options"])
    params_file = write_params(tmp_path / "mini.yaml", mini_params)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ssaseg.models.zoo", "mlflow", "ssaseg.cli", "ssaseg.engine.train"])
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_train_at_barrier, args=(barrier, str(params_file), results))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)

    winners = [o for o in outcomes if o[1] == 0]
    losers = [o for o in outcomes if o[1] != 0]
    assert len(winners) == 1, outcomes
    winner_pid = winners[0][0]
    for _, code, stderr in losers:
        assert code == 2
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert "is being trained by process" in lines[0] and f"process {winner_pid} " in lines[0]
    run_dir = tmp_path / "results/mini/synthetic/segformer_b0/linear/seed0"
    assert (run_dir / "model.pt").is_file() and not (run_dir / ".train.lock.owner").exists()
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (run_dir / "mlflow_run_id.txt").read_text().strip() == runs[0].info.run_id
