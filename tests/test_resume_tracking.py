"""Issue #14 item 10: a resumed run says so, and MLflow gets each training step exactly once
(the steps replayed after the checkpoint were logged before the kill)."""

import csv
from pathlib import Path

import pytest

from ssaseg import cli
from ssaseg.config import resolve_run, validate_params
from ssaseg.data.prepare import prepare_dataset
from ssaseg.engine import checkpoint, train as train_module
from ssaseg.tracking import init_store
from tests.conftest import write_params


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at, resumed_at", [
    (5, 3),  # killed after logging steps 1-5; last.pt holds step 3: steps 4 and 5 are replayed
    (2, 0),  # killed before the first checkpoint: steps 1 and 2 are replayed from scratch
])
def test_resume_is_announced_and_mlflow_gets_each_step_once(tmp_path, mini_params, monkeypatch,
                                                            capsys, kill_at, resumed_at):
    from mlflow.tracking import MlflowClient

    mini_params["train"].update(iters=6, checkpoint_every=3, log_every=1)
    params = validate_params(mini_params)
    prepare_dataset("synthetic", "", f"{params['data_dir']}/synthetic",
                    **params["datasets"]["synthetic"]["options"])
    init_store(params["tracking"]["uri"])
    path = write_params(tmp_path / "params.yaml", mini_params)
    argv = ["train", "--params", str(path), "--dataset", "synthetic", "--model", "segformer_b0",
            "--classifier", "linear", "--seed", "0", "--no-progress"]
    run_dir = Path(resolve_run(params, "synthetic", "segformer_b0", "linear", 0).run_dir)
    ckpt = checkpoint.last_checkpoint(run_dir)

    real_set_lr = train_module.set_lr

    def set_lr_then_die(optimizer, lr, iteration, *args):
        if iteration == kill_at:  # steps 1 .. kill_at are in MLflow
            raise _Killed
        return real_set_lr(optimizer, lr, iteration, *args)

    monkeypatch.setattr(train_module, "set_lr", set_lr_then_die)
    with pytest.raises(_Killed):
        cli.main(argv)
    if resumed_at:
        assert checkpoint.load(ckpt)["iteration"] == resumed_at
    else:
        assert not ckpt.exists()
    capsys.readouterr()
    monkeypatch.setattr(train_module, "set_lr", real_set_lr)
    assert cli.main(argv) == 0

    err = capsys.readouterr().err
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    client = MlflowClient(params["tracking"]["uri"])
    with open(run_dir / "train_log.csv") as fh:
        curve = {int(row["iter"]): float(row["loss"]) for row in csv.DictReader(fh)}
    for key in ("loss", "lr", "loss/ce"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, 7)), (key, steps)
    # the one value of each step is that of the (resumed, deterministic) loss curve
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert logged == pytest.approx(curve, rel=1e-6)
    experiment = client.get_experiment_by_name("synthetic").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]
    start = (f"resuming from {ckpt} at iteration {resumed_at}" if resumed_at else
             "no checkpoint: starting at iteration 0")
    assert f"{start}; MLflow run {run_id} has steps up to {kill_at}, not logged again" in err, err
