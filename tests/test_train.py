import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssaseg.config import resolve_run, validate_params
from ssaseg.data.layout import DatasetError
from ssaseg.data.prepare import prepare_dataset
from ssaseg.engine import checkpoint, train as train_module
from ssaseg.engine.train import NonFiniteLossError, train
from ssaseg.tracking import init_store


def _setup(params):
    params = validate_params(params)
    ds = params["datasets"]["synthetic"]
    prepare_dataset("synthetic", "", f"{params['data_dir']}/synthetic", **ds["options"])
    init_store(params["tracking"]["uri"])
    return params


def _history(run_dir):
    with open(f"{run_dir}/train_log.csv") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_model_overfits_a_tiny_batch(mini_params):
    mini_params["datasets"]["synthetic"].update(
        options={"num_train": 2, "num_val": 1, "image_size": 32}, scale_range=[1.0, 1.0])
    mini_params["train"].update(iters=40, checkpoint_every=40, log_every=10)
    mini_params["train"]["optimizer"]["lr"] = 2e-3
    params = _setup(mini_params)
    cfg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    train(cfg, progress=False)
    losses = [row["loss"] for row in _history(cfg.run_dir)]
    assert np.mean(losses[-5:]) < 0.35 * np.mean(losses[:3])


class _Killed(Exception):
    pass


def test_resume_follows_the_uninterrupted_loss_curve(tmp_path, mini_params, monkeypatch):
    params = _setup(mini_params)
    full = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    train(full, progress=False)
    expected = _history(full.run_dir)

    params["results_dir"] = str(tmp_path / "killed")
    killed = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state.get("iteration") == 3:
            raise _Killed

    monkeypatch.setattr(train_module.checkpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        train(killed, progress=False)
    assert not list((tmp_path / "killed").rglob("model.pt"))
    monkeypatch.setattr(train_module.checkpoint, "save", real_save)
    train(killed, progress=False)  # resumes at iteration 3
    resumed = _history(killed.run_dir)
    assert [r["iter"] for r in resumed] == [r["iter"] for r in expected] == list(range(1, 7))
    for a, b in zip(resumed, expected):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    state_a = torch.load(f"{full.run_dir}/model.pt", weights_only=False)["model"]
    state_b = torch.load(f"{killed.run_dir}/model.pt", weights_only=False)["model"]
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_with_iteration_and_keeps_last_checkpoint(mini_params, monkeypatch):
    params = _setup(mini_params)
    cfg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    from ssaseg.models.classifiers.linear import LinearClassifier

    real_forward = LinearClassifier.forward
    calls = {"n": 0}

    def poisoned(self, feature, labels=None):
        out = real_forward(self, feature, labels)
        calls["n"] += 1
        if calls["n"] == 5:  # iteration index 4, after the checkpoint at 3
            out.losses["ce"] = out.losses["ce"] * float("nan")
        return out

    monkeypatch.setattr(LinearClassifier, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"at iteration 4 .*last good checkpoint is .*last.pt"):
        train(cfg, progress=False)
    state = checkpoint.load(f"{cfg.run_dir}/checkpoints/last.pt")
    assert state["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_image_and_bad_label_values_are_named(mini_params):
    params = _setup(mini_params)
    cfg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    root = f"{params['data_dir']}/synthetic"
    from ssaseg.data.dataset import SegmentationDataset

    ds = SegmentationDataset(root, "val")
    image_path = f"{root}/{ds.items[0][0]}"
    with open(image_path, "wb") as fh:
        fh.write(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cannot read .*val/images/00000.png"):
        ds[0]
    label_path = f"{root}/{ds.items[1][1]}"
    label = np.asarray(Image.open(label_path)).copy()
    label[0, 0] = 42
    Image.fromarray(label).save(label_path)
    with pytest.raises(DatasetError, match=r"val/labels/00001.png: label values \[42\]"):
        ds[1]
    (Path(root) / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="not a completely prepared dataset"):
        train(cfg, progress=False)


def test_checkpoint_of_other_settings_is_set_aside_not_resumed(mini_params):
    params = _setup(mini_params)
    cfg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    train(cfg, progress=False)
    first_run_id = open(f"{cfg.run_dir}/mlflow_run_id.txt").read()
    params["train"]["optimizer"]["lr"] = 5e-4  # the same run directory, another model
    changed = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    assert changed.run_dir == cfg.run_dir and changed.config_hash() != cfg.config_hash()
    train(changed, progress=False)
    assert [r["iter"] for r in _history(cfg.run_dir)] == list(range(1, 7))  # not resumed at 6
    assert list(Path(cfg.run_dir, "checkpoints").glob("last.pt.stale-*"))
    assert open(f"{cfg.run_dir}/mlflow_run_id.txt").read() != first_run_id
    state = checkpoint.load(f"{cfg.run_dir}/model.pt")
    assert state["config"]["train"]["optimizer"]["lr"] == 5e-4
