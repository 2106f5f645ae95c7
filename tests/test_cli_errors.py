"""Issue #14 item 9: every input error ends `python -m ssaseg ...` with exit 2 and one line on
stderr (no traceback); a diverging run never leaves a non-finite or NaN-producing checkpoint and
names the last good one. Each case runs the real command in a subprocess on 32 px synthetic data.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssaseg.config import resolve_run, validate_params
from ssaseg.data.prepare import prepare_dataset
from ssaseg.engine import checkpoint
from ssaseg.tracking import init_store
from ssaseg.weights import weights_for_model, weights_path
from tests.conftest import REPO, miniature_params, write_params

RUN = ["--dataset", "synthetic", "--model", "segformer_b0", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """One prepared dataset and MLflow store for the module (each test has its own results)."""
    root = tmp_path_factory.mktemp("shared")
    params = validate_params(miniature_params(root))
    options = {**params["datasets"]["synthetic"]["options"], "num_train": 4, "num_val": 1}
    prepare_dataset("synthetic", "", f"{params['data_dir']}/synthetic", **options)
    init_store(params["tracking"]["uri"])  # created here: MLflow logs its migrations to stderr
    return root


def _params(shared: Path, tmp_path: Path) -> dict:
    params = miniature_params(shared)
    params["results_dir"] = str(tmp_path / "results")
    params["weights_dir"] = str(tmp_path / "weights")
    params["datasets"]["synthetic"]["options"].update(num_train=4, num_val=1)
    return params


# `python -m ssaseg` with a finite loss whose gradients are NaN at iteration 1, so that the
# update of iteration 1 makes the weights NaN (as an fp32 overflow would)
NAN_GRADIENT_AT_ITERATION_1 = """
import sys, torch
from ssaseg.cli import main
from ssaseg.models.classifiers.linear import LinearClassifier

class NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))

real_forward, calls = LinearClassifier.forward, []

def poisoned(self, feature, labels=None):
    out = real_forward(self, feature, labels)
    calls.append(1)
    if len(calls) == 2:  # one training forward per iteration: iteration 1
        out.losses["ce"] = NaNGradient.apply(out.losses["ce"])
    return out

LinearClassifier.forward = poisoned
sys.exit(main(sys.argv[1:]))
"""


def _cli(tmp_path: Path, params: dict, command: str = "train", classifier: str = "linear",
         code: str | None = None):
    path = write_params(tmp_path / "params.yaml", params)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    entry = ["-c", code] if code else ["-m", "ssaseg"]
    return subprocess.run(
        [sys.executable, *entry, command, "--params", str(path), *RUN,
         "--classifier", classifier], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600)


def _assert_one_line_exit_2(out: subprocess.CompletedProcess, *fragments: str) -> str:
    err = out.stderr
    assert out.returncode == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _run_dir(params: dict, classifier: str = "linear") -> Path:
    return Path(resolve_run(validate_params(params), "synthetic", "segformer_b0", classifier,
                            0).run_dir)


def _weights(params: dict) -> Path:
    params["train"]["pretrained"] = True
    return weights_path(weights_for_model("segformer_b0"), params["weights_dir"])


def _corrupt_last_checkpoint(params):
    ckpt = checkpoint.last_checkpoint(_run_dir(params))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x80\x02 half a checkpoint")
    return "train", "linear", [f"cannot load checkpoint {ckpt}", "delete it"]


def _corrupt_weights(params):
    path = _weights(params)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated download")
    return "train", "linear", [f"cannot load weights {path}", "fetch-weights"]


def _mismatched_weights(params):
    path = _weights(params)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"not_a_layer.weight": torch.zeros(3)}}, path)
    return "train", "linear", [f"{path.name} (", "does not match", "missing keys (",
                               "unexpected keys (1): not_a_layer.weight"]


def _missing_weights(params):  # one line already before item 9: kept so
    path = _weights(params)
    return "train", "linear", [f"pretrained weights {path} not found", "fetch-weights"]


def _refused_classifier_parameters(params):  # passes the schema, refused by SSAClassifier
    params["classifiers"] = {"ssa": {"use_sepa": False, "use_sppa": False}}
    return "train", "ssa", ["use_sepa and use_sppa are both false"]


def _class_weight_of_another_dataset(params):  # its length depends on the prepared dataset
    params["classifiers"] = {"linear": {"class_weight": [1.0, 2.0, 3.0]}}
    return "train", "linear", ["linear classifier: class_weight needs 10 positive values"]


def _cuda_without_a_gpu(params):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    params["train"]["device"] = "cuda"
    return "train", "linear", ["device 'cuda' requested but CUDA is not available"]


def _evaluate_untrained(params):
    model = _run_dir(params) / "model.pt"
    return "evaluate", "linear", [f"checkpoint {model} not found", "train this run first"]


@pytest.mark.parametrize("case", [_corrupt_last_checkpoint, _corrupt_weights,
                                  _mismatched_weights, _missing_weights,
                                  _refused_classifier_parameters, _class_weight_of_another_dataset,
                                  _cuda_without_a_gpu, _evaluate_untrained],
                         ids=lambda case: case.__name__.strip("_"))
def test_input_errors_end_the_command_with_one_line_and_exit_2(shared, tmp_path, case):
    params = _params(shared, tmp_path)
    command, classifier, fragments = case(params)
    _assert_one_line_exit_2(_cli(tmp_path, params, command, classifier), *fragments)
    assert not list(Path(params["results_dir"]).rglob("model.pt"))


@pytest.mark.parametrize("lr, iters, code, fragment", [
    # lr 1e30 with warm-up ratio 0: the update of iteration 0 has lr 0, that of iteration 1
    # makes the weights huge (~1e29) but finite, and the forward of iteration 2 is NaN. Before
    # item 9 the NaN message named last.pt of iteration 2: those very weights.
    (1e30, 6, None, "loss is nan at iteration 2"),
    # the update of iteration 1 makes the weights NaN: before item 9 last.pt held them
    (1e-3, 6, NAN_GRADIENT_AT_ITERATION_1, "loss is nan at iteration 2"),
    # ... in the last iteration: no next forward; the weights are checked before any write
    # (before item 9: exit 0 with NaN in last.pt and model.pt)
    (1e-3, 2, NAN_GRADIENT_AT_ITERATION_1,
     "the weights or optimiser state are NaN/inf after the update of iteration 1"),
], ids=["huge-lr", "nan-update", "nan-last-update"])
def test_divergence_leaves_only_good_checkpoints_and_names_the_last(shared, tmp_path, lr, iters,
                                                                    code, fragment):
    params = _params(shared, tmp_path)
    params["train"].update(iters=iters, checkpoint_every=1, log_every=1,
                           schedule={"warmup_iters": 2, "warmup_ratio": 0.0})
    params["train"]["optimizer"]["lr"] = lr
    ckpt = checkpoint.last_checkpoint(_run_dir(params))
    _assert_one_line_exit_2(_cli(tmp_path, params, code=code), fragment,
                            f"the last good checkpoint is {ckpt} (iteration 1)")
    assert sorted(p.name for p in Path(params["results_dir"]).rglob("*.pt")) == ["last.pt"]
    state = checkpoint.load(ckpt)
    assert state["iteration"] == 1
    tensors = [*state["model"].values(),
               *(v for moments in state["optimizer"]["state"].values() for v in moments.values())]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only input errors become one line: a KeyError from a bug is not hidden behind exit 2."""
    from ssaseg import cli

    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_report", buggy)  # build_parser() binds it when main() runs
    with pytest.raises(KeyError):
        cli.main(["report", "--params", "unused.yaml"])


def test_a_non_finite_checkpoint_is_not_resumed(shared, tmp_path, monkeypatch):
    """A last.pt with NaN weights (as written before item 9) is refused by name, not resumed
    into a NaN loss."""
    from ssaseg import cli
    from ssaseg.engine import train as train_module

    params = _params(shared, tmp_path)
    real_set_lr = train_module.set_lr

    def set_lr_then_stop(optimizer, lr, iteration, *args):
        if iteration == 4:  # last.pt holds iteration 3
            raise KeyboardInterrupt
        return real_set_lr(optimizer, lr, iteration, *args)

    monkeypatch.setattr(train_module, "set_lr", set_lr_then_stop)
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", "--params", str(path), *RUN, "--classifier", "linear"])
    ckpt = checkpoint.last_checkpoint(_run_dir(params))
    state = checkpoint.load(ckpt)
    next(v for v in state["model"].values() if v.is_floating_point()).fill_(float("nan"))
    checkpoint.save(ckpt, state)
    _assert_one_line_exit_2(_cli(tmp_path, params), f"checkpoint {ckpt} holds NaN/inf weights",
                            "delete it to start over")
