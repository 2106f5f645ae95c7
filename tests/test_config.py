import copy

import pytest

from ssaseg.cli import main
from ssaseg.config import ConfigError, all_runs, load_params, resolve_run, validate_params
from tests.conftest import REPO, write_params


def test_default_params_are_valid_and_expand_to_runs():
    params = load_params(REPO / "params" / "default.yaml")
    runs = all_runs(params)
    assert len(runs) == len(params["models"]) * len(params["classifiers"]) * len(params["seeds"])
    cfg = resolve_run(params, *runs[0])
    assert cfg.train.iters == params["train"]["iters"]
    assert cfg.train.schedule.power == 1.0  # a default filled from the schema


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda p: p.update(bogus=1), "Additional properties are not allowed ('bogus'"),
        (lambda p: p["train"].update(iters=0), "train.iters: 0 is less than the minimum of 1"),
        (lambda p: p["train"].update(optimizer={"name": "lamb"}), "train.optimizer.name: 'lamb'"),
        (lambda p: p.update(models=["segformer_b9"]), "models: unknown name 'segformer_b9'; known:"),
        (lambda p: p.update(classifiers={"svm": {}}), "classifiers: unknown name 'svm'"),
        (lambda p: p.update(datasets={"imagenet": {}}), "datasets: unknown name 'imagenet'"),
        (lambda p: p["classifiers"].update(linear={"dropuot": 0.1}),
         "classifiers.linear: unknown parameter(s) ['dropuot']; linear accepts: dropout"),
        (lambda p: p["datasets"]["synthetic"].update(crop_size=[64]), "datasets.synthetic.crop_size"),
    ],
)
def test_schema_rejects_bad_params_naming_the_key(mini_params, mutate, fragment):
    bad = copy.deepcopy(mini_params)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate_params(bad, source="p.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("p.yaml: ")


def test_model_override_applies_to_that_model_only(mini_params):
    mini_params["models"] = ["segformer_b0", "fcn_resnet18"]
    mini_params["model_overrides"] = {"fcn_resnet18": {"train": {"optimizer": {"name": "sgd",
                                                                               "lr": 0.01}}}}
    params = validate_params(mini_params)
    fcn = resolve_run(params, "synthetic", "fcn_resnet18", "linear", 0)
    seg = resolve_run(params, "synthetic", "segformer_b0", "linear", 0)
    assert (fcn.train.optimizer.name, fcn.train.optimizer.lr) == ("sgd", 0.01)
    assert fcn.train.optimizer.weight_decay == 0.01  # the rest still from the base section
    assert (seg.train.optimizer.name, seg.train.optimizer.lr) == ("adamw", 1e-3)
    assert fcn.config_hash() != seg.config_hash()


def test_bad_override_value_is_reported_with_its_path(mini_params):
    mini_params["model_overrides"] = {"segformer_b0": {"train": {"iters": -1}}}
    params = validate_params(mini_params)
    with pytest.raises(ConfigError, match=r"model_overrides.segformer_b0.train: iters: -1"):
        resolve_run(params, "synthetic", "segformer_b0", "linear", 0)


def test_later_params_file_overrides_earlier(tmp_path, mini_params):
    base = write_params(tmp_path / "base.yaml", mini_params)
    extra = write_params(tmp_path / "extra.yaml", {"train": {"iters": 11}, "seeds": [1, 2]})
    params = load_params([base, extra])
    assert params["train"]["iters"] == 11 and params["seeds"] == [1, 2]
    assert params["train"]["batch_size"] == mini_params["train"]["batch_size"]


def test_cli_prints_resolved_config_and_reports_errors(tmp_path, mini_params, capsys):
    path = write_params(tmp_path / "p.yaml", mini_params)
    assert main(["config", "--params", str(path), "--dataset", "synthetic", "--model",
                 "segformer_b0", "--classifier", "linear", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "classifier: linear" in out and "iters: 6" in out
    mini_params["models"] = ["nope"]
    bad = write_params(tmp_path / "bad.yaml", mini_params)
    assert main(["config", "--params", str(bad)]) == 2
    assert "unknown name 'nope'" in capsys.readouterr().err
