"""Checkpoints are loaded with ``torch.load(weights_only=True)``: one holding a pickled object
is refused (no code runs), and our own train -> kill -> resume -> evaluate still works."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ssaseg import atomic_io
from ssaseg.config import resolve_run, validate_params
from ssaseg.data.dataset import SegmentationDataset
from ssaseg.data.prepare import prepare_dataset
from ssaseg.engine import checkpoint
from ssaseg.engine import train as train_module
from ssaseg.engine.evaluate import evaluate
from ssaseg.engine.train import load_trained, train
from ssaseg.tracking import NullTracker


class _RunsCodeWhenUnpickled:
    """What a hostile checkpoint holds: unpickling it calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_checkpoint_holding_a_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {},
                "extra": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "posix.mkdir" in message
    assert not marker.exists()  # nothing was run
    # a callable stored by reference is refused the same way
    torch.save({"hook": print}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"refusing checkpoint .*pickled print"):
        checkpoint.load(path)


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(1000)}, "iteration": 3})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value) and f"cannot load checkpoint {path}" in str(err.value)


def test_save_refuses_what_weights_only_could_not_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['config'\]\['root'\] is a pathlib"):
        checkpoint.save(tmp_path / "x.pt", {"config": {"root": tmp_path}})
    assert not list(tmp_path.iterdir())


class _Killed(Exception):
    pass


def test_train_kill_resume_evaluate_loads_everything_weights_only(mini_params, monkeypatch):
    mini_params["train"].update(iters=4, checkpoint_every=2)
    params = validate_params(mini_params)
    ds = params["datasets"]["synthetic"]
    prepare_dataset("synthetic", "", f"{params['data_dir']}/synthetic", **ds["options"])
    cfg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    # no MLflow here (creating its store takes seconds): what is tested is the files
    monkeypatch.setattr(train_module, "open_tracker", lambda *args, **kwargs: NullTracker())
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    real_save = checkpoint.save

    def save_then_die(path, state):
        real_save(path, state)
        if state.get("iteration") == 2:
            raise _Killed

    monkeypatch.setattr(train_module.checkpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        train(cfg, progress=False)
    monkeypatch.setattr(train_module.checkpoint, "save", real_save)
    ckpt = checkpoint.last_checkpoint(cfg.run_dir)  # a killed save left its temporary
    killed = ckpt.with_name(f".last.pt.{atomic_io._HOST}-999999999.0123abcd.tmp")
    killed.write_bytes(b"half a checkpoint")
    train(cfg, progress=False)  # resumes from last.pt at iteration 2
    assert not killed.exists()
    assert loads == [True]
    history = (Path(cfg.run_dir) / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]
    model, state = load_trained(Path(cfg.run_dir) / "model.pt", torch.device("cpu"))
    assert loads == [True, True]
    assert state["num_classes"] == 10 and not model.training
    metrics, _ = evaluate(model, SegmentationDataset(cfg.dataset.root, "val"),
                          torch.device("cpu"))
    assert 0.0 <= metrics.miou <= 1.0
