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
        (lambda p: p.update(classifiers={"svm": {}}),
         "classifiers: Additional properties are not allowed ('svm' was unexpected); allowed: "
         "linear, ssa, protoseg"),
        (lambda p: p.update(datasets={"imagenet": {}}), "datasets: unknown name 'imagenet'"),
        (lambda p: p["classifiers"].update(linear={"dropuot": 0.1}),
         "classifiers.linear: Additional properties are not allowed ('dropuot' was unexpected); "
         "allowed: dropout, loss_weight, bias, class_weight"),
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


# Each bad value of issue #14 item 8: caught at validation, before any work, as one line that
# names the key. Before the strict types, 1.0e+3 passed as an integer and .nan as a number.
BAD_VALUES = [
    (lambda p: p["train"].update(iters=1.0e3),
     "train.iters: 1000.0 is not of type 'integer' (write it as a whole number: 1000)"),
    (lambda p: p["train"]["optimizer"].update(lr=float("nan")),
     "train.optimizer.lr: nan is not a finite number"),
    (lambda p: p["train"]["optimizer"].update(lr=float("inf")),
     "train.optimizer.lr: inf is not a finite number"),
    (lambda p: p["train"].update(pretrained=1), "train.pretrained: 1 is not of type 'boolean'"),
    (lambda p: p["classifiers"].update(ssa={"temperature": "hot"}),
     "classifiers.ssa.temperature: 'hot' is not of type 'number'"),
    (lambda p: p["classifiers"].update(ssa={"boundary_width": 2.5}),
     "classifiers.ssa.boundary_width: 2.5 is not of type 'integer'"),
    (lambda p: p["classifiers"].update(protoseg={"hard_assignment": "max"}),
     "classifiers.protoseg.hard_assignment: 'max' is not one of ['gumbel', 'argmax']"),
    (lambda p: p["datasets"]["synthetic"]["options"].update(num_trian=5),
     "datasets.synthetic.options: Additional properties are not allowed ('num_trian' was "
     "unexpected); allowed: seed, num_train"),
    (lambda p: p["datasets"]["synthetic"]["options"].update(image_size="big"),
     "datasets.synthetic.options.image_size: 'big' is not of type 'integer'"),
    (lambda p: p["profile"].update(repeats=True), "profile.repeats: True is not of type 'integer'"),
]


@pytest.mark.parametrize("mutate, fragment", BAD_VALUES)
def test_bad_values_stop_train_with_exit_2_and_one_line(tmp_path, mini_params, capsys, mutate,
                                                        fragment):
    mutate(mini_params)
    path = write_params(tmp_path / "bad.yaml", mini_params)
    code = main(["train", "--params", str(path), "--dataset", "synthetic", "--model",
                 "segformer_b0", "--classifier", "linear", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and fragment in err and str(path) in err, err
    assert not (tmp_path / "results").exists()  # stopped before any work


@pytest.mark.parametrize("content, kind", [("- name: a\n- name: b\n", "list"), ("42\n", "int"),
                                           ("just words\n", "str")])
def test_a_params_file_that_is_not_a_mapping_is_named(tmp_path, capsys, content, kind):
    path = tmp_path / "odd.yaml"
    path.write_text(content)
    assert main(["config", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}: the top level must be a mapping of keys" in err and f"not a {kind}" in err


def test_schema_lists_every_classifier_and_dataset_parameter_as_the_code_defines_it():
    """The schema documents (and validates) each constructor's keyword parameters: same names,
    types and defaults. A parameter added to a classifier or a prepare step must be added to
    workflow/schemas/params.schema.yaml ($defs) too, or this fails."""
    import inspect

    from ssaseg.config import load_schema
    from ssaseg.data.prepare import PREPARERS
    from ssaseg.models.classifiers import CLASSIFIERS

    schema = load_schema()
    json_type = {"int": "integer", "float": "number", "bool": "boolean", "str": "string",
                 "list[float] | None": ["array", "null"], "float | None": ["number", "null"],
                 "int | None": ["integer", "null"]}
    assert set(schema["properties"]["classifiers"]["properties"]) == set(CLASSIFIERS)
    assert set(schema["$defs"]["dataset_options"]) - {"archive"} == set(PREPARERS)
    entries = [(schema["$defs"][n], c, {"in_channels", "num_classes", "ignore_index"})
               for n, c in CLASSIFIERS.items()]
    entries += [(schema["$defs"]["dataset_options"][n], f, {"raw_dir", "out_dir"})
                for n, f in PREPARERS.items()]
    for entry, constructor, positional in entries:
        params = {k: v for k, v in inspect.signature(constructor).parameters.items()
                  if k not in positional}
        assert set(entry["properties"]) == set(params), constructor
        for name, param in params.items():
            prop = entry["properties"][name]
            assert prop["type"] == json_type[str(param.annotation)], (constructor, name)
            assert prop["description"].endswith(f"(default {param.default})"), (constructor, name)
            assert "default" not in prop  # the constructor (and SSA's preset) owns the default


def test_validating_a_paper_table_imports_no_torch():
    """Planning speed: Snakemake validates the params (and resolves every run) while it plans;
    importing torch would add seconds to every `snakemake -n` and every cluster job."""
    import subprocess
    import sys

    code = ("import sys; from ssaseg.config import all_runs, load_params, resolve_run; "
            "p = load_params('params/ade20k.yaml'); [resolve_run(p, *r) for r in all_runs(p)]; "
            "print(sorted(m for m in ('torch', 'timm', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_layer_decay_rate_at_its_default_keeps_older_runs_hash(mini_params):
    """A checkpoint written before train.optimizer.layer_decay_rate existed (its stored config
    has no such key) still counts as trained with the same settings; another rate does not."""
    from ssaseg.config import run_config_from_dict

    cfg = resolve_run(validate_params(mini_params), "synthetic", "segformer_b0", "linear", 0)
    assert cfg.train.optimizer.layer_decay_rate == 1.0
    older = cfg.to_dict()
    del older["train"]["optimizer"]["layer_decay_rate"]
    assert run_config_from_dict(older).config_hash() == cfg.config_hash()
    mini_params["train"]["optimizer"]["layer_decay_rate"] = 0.9
    decayed = resolve_run(validate_params(mini_params), "synthetic", "segformer_b0", "linear", 0)
    assert decayed.config_hash() != cfg.config_hash()


def test_a_classifier_variant_is_validated_as_its_classifier(mini_params):
    """`ssa-no_dice` is SSA with its own parameters (an ablation, its own runs)."""
    mini_params["classifiers"] = {"linear": {}, "ssa-no_dice": {"dice_weight": 0.0}}
    params = validate_params(copy.deepcopy(mini_params))
    cfg = resolve_run(params, "synthetic", "segformer_b0", "ssa-no_dice", 0)
    assert cfg.classifier_params == {"dice_weight": 0.0}
    assert cfg.run_dir.endswith("ssa-no_dice/seed0")
    mini_params["classifiers"] = {"ssa-no_dice": {"dice_wieght": 0.0}}
    with pytest.raises(ConfigError, match=r"classifiers.ssa-no_dice: Additional properties"):
        validate_params(copy.deepcopy(mini_params), source="p.yaml")
    mini_params["classifiers"] = {"svm-x": {}}
    with pytest.raises(ConfigError, match=r"\('svm-x' was unexpected\); allowed: linear, ssa, "
                                          r"protoseg, linear_control, or <one of them>-<label>"):
        validate_params(copy.deepcopy(mini_params), source="p.yaml")
