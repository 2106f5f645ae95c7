"""One validated config object per experiment run, built from plain YAML in params/.

A params file (schema: workflow/schemas/params.schema.yaml) lists datasets, models, classifiers
and seeds; :func:`resolve_run` picks one (dataset, model, classifier, seed), applies the one
override layer (``model_overrides``), fills defaults, validates, and returns a frozen
:class:`RunConfig`. Every bad key or value is reported with its path before any work starts.

    python -m ssaseg config --params params/default.yaml --dataset synthetic \
        --model segformer_b0 --classifier linear --seed 0     # print the resolved config
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ssaseg.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "params.schema.yaml"


class ConfigError(InputError, ValueError):
    """A params file is invalid; the message names the file and the key."""


def classifier_kind(name: str) -> str:
    """The classifier a name builds: ``ssa-no_dice`` -> ``ssa``. A variant (``<classifier>-
    <label>`` under ``classifiers:``) is the classifier with its own parameters and its own
    runs, e.g. one ablation; the report compares it with linear and with its classifier."""
    return name.split("-", 1)[0]


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    """The schema, parsed once per process: parsing it is slow (~0.15 s) and Snakemake resolves
    every run's config, possibly hundreds of times, while it plans."""
    return _load_yaml(SCHEMA_PATH.read_text())


def _load_yaml(text: str):
    """``yaml.safe_load`` through libyaml where PyYAML has it (ten times faster, same result)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """A fresh copy of the params schema (callers may fill defaults into it)."""
    return copy.deepcopy(_parsed_schema())


def _is_integer(checker, value) -> bool:
    """JSON Schema counts 1000.0 (YAML ``1.0e+3``) as an integer; training would not."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(checker, value) -> bool:
    """A finite int or float: YAML's ``.nan`` and ``.inf`` are not valid settings."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@functools.lru_cache(maxsize=1)
def _validator_class() -> type:
    """Draft 2020-12 with strict integer/number types, writing each property's ``default`` into
    the instance (as ``snakemake.utils.validate(..., set_default=True)`` does)."""
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    types = base.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return jsonschema.validators.extend(base, {"properties": set_defaults}, type_checker=types)


@functools.lru_cache(maxsize=None)
def _validator(*path: str) -> jsonschema.protocols.Validator:
    """The (cached) validator of the schema node at ``path`` (() = the whole schema). Building
    one costs milliseconds, and Snakemake resolves hundreds of runs while it plans."""
    node = _parsed_schema()
    for key in path:
        node = node[key]
    return _validator_class()(node)


def _format_error(error: jsonschema.ValidationError, source: str, prefix: str = "") -> str:
    key = ".".join([prefix, *map(str, error.absolute_path)] if prefix
                   else map(str, error.absolute_path)) or "<top level>"
    message = error.message
    value = error.instance
    if error.validator == "type" and isinstance(value, float) and not math.isfinite(value):
        message = f"{value} is not a finite number"
    elif error.validator == "type" and error.validator_value == "integer" and isinstance(
            value, float) and value.is_integer():
        message += f" (write it as a whole number: {int(value)})"
    elif error.validator == "additionalProperties" and isinstance(error.schema.get("properties"),
                                                                 dict):
        if error.schema.get("patternProperties"):  # classifiers: names or <name>-<label>
            import re

            patterns = list(error.schema["patternProperties"])
            extras = sorted(k for k in value if k not in error.schema["properties"]
                            and not any(re.search(p, k) for p in patterns))
            message = (f"Additional properties are not allowed "
                       f"({', '.join(map(repr, extras))} was unexpected); allowed: "
                       f"{', '.join(error.schema['properties'])}, or <one of them>-<label> "
                       "for a variant")
        else:
            message += f"; allowed: {', '.join(error.schema['properties'])}"
    return f"{source}: {key}: {message}"


def _raise_errors(validator, instance, source: str, prefix: str = "") -> None:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_format_error(e, source, prefix) for e in errors[:10]))


def validate_params(params: dict, source: str = "params") -> dict:
    """Validate a params mapping against the schema, filling defaults in place; returns it.

    Needs neither torch nor any model code: the names and parameters it checks are in the
    schema and in torch-free catalogs, so that Snakemake plans a paper table in seconds."""
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (name:, datasets:, "
                          f"models:, ...), not a {type(params).__name__}")
    for section in ("datasets", "classifiers"):  # `name:` with nothing after it means {}
        if isinstance(params.get(section), dict):
            params[section] = {k: v if v is not None else {} for k, v in params[section].items()}
    _raise_errors(_validator(), params, source)
    _check_names(params, source)
    return params


def _check_names(params: dict, source: str) -> None:
    """Unknown model or dataset names (listing the known ones) and each dataset's options."""
    from ssaseg.data.prepare import PREPARERS
    from ssaseg.models.zoo import MODELS

    for key, names, known in (
        ("models", params["models"], MODELS),
        ("datasets", list(params["datasets"]), PREPARERS),
        ("model_overrides", list(params.get("model_overrides", {})), MODELS),
    ):
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"{source}: {key}: unknown name {name!r}; known: {', '.join(sorted(known))}"
                )
    for name, dataset in params["datasets"].items():
        _raise_errors(_validator("$defs", "dataset_options", name), dataset["options"], source,
                      prefix=f"datasets.{name}.options")
    _check_mask_classification(params, source)
    _check_checkpoints(params, source)


def _check_checkpoints(params: dict, source: str) -> None:
    """``checkpoints`` names only runs of this params file (a typo must not be skipped)."""
    for dataset, models in params.get("checkpoints", {}).items():
        for model, classifiers in models.items():
            for classifier in classifiers:
                for key, value, known in (("datasets", dataset, list(params["datasets"])),
                                          ("models", model, params["models"]),
                                          ("classifiers", classifier,
                                           list(params["classifiers"]))):
                    if value not in known:
                        raise ConfigError(
                            f"{source}: checkpoints.{dataset}.{model}.{classifier}: {value!r} "
                            f"is not in this file's {key} ({', '.join(map(str, known))})")


def _check_mask_classification(params: dict, source: str) -> None:
    """A mask-classification model (Mask2Former) takes only the classifiers defined for it, and
    its `linear` (its own semantic inference) has no parameters."""
    from ssaseg.models.zoo import MASK_CLASSIFICATION_CLASSIFIERS as MASK_CLASSIFIERS
    from ssaseg.models.zoo import MODELS

    for model in params["models"]:
        if not MODELS[model].mask_classification:
            continue
        undefined = sorted(c for c in params["classifiers"]
                           if classifier_kind(c) not in MASK_CLASSIFIERS)
        if undefined:
            raise ConfigError(
                f"{source}: classifiers: {undefined} not defined for {model}, a "
                f"mask-classification model (it takes: {', '.join(sorted(MASK_CLASSIFIERS))}); "
                "run it from a params file without them"
            )
        if any(v for c, v in params["classifiers"].items() if classifier_kind(c) == "linear"):
            raise ConfigError(
                f"{source}: classifiers.linear: {model}'s `linear` is Mask2Former's own "
                "semantic inference and takes no parameters; give it as `linear: {}`"
            )


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(paths: list[str | Path] | str | Path) -> dict:
    """Read one or more params YAML files (later files override earlier ones), validated."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ConfigError("no params file given; pass --params params/default.yaml")
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"params file {path} not found")
        try:
            data = _load_yaml(path.read_text())
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())  # one line
            raise ConfigError(f"{path}: not valid YAML: {detail}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys (name:, "
                              f"datasets:, models:, ...), not a {type(data).__name__}")
        merged = _deep_merge(merged, data)
    return validate_params(merged, source=" + ".join(str(p) for p in paths))


# --------------------------------------------------------------------------- run config objects


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    lr: float
    weight_decay: float
    momentum: float
    betas: tuple[float, float]
    head_lr_mult: float
    norm_weight_decay: float
    layer_decay_rate: float = 1.0  # 1 = no layer-wise lr decay


# Optimiser keys added after runs existed: at these values they leave config_hash unchanged, so
# checkpoints written before the key existed still count as trained with the same settings.
_HASH_NEUTRAL_OPTIMIZER_DEFAULTS: dict[str, Any] = {"layer_decay_rate": 1.0}


@dataclass(frozen=True)
class ScheduleConfig:
    warmup_iters: int
    warmup_ratio: float
    power: float
    min_lr: float


@dataclass(frozen=True)
class TrainConfig:
    iters: int
    batch_size: int
    pretrained: bool
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    amp: str
    grad_clip: float | None
    checkpoint_every: int
    log_every: int
    device: str
    num_workers: int
    threads: int
    gpus: int
    sync_bn: bool


@dataclass(frozen=True)
class EvalConfig:
    mode: str
    crop_size: tuple[int, int]
    stride: tuple[int, int]
    device: str
    threads: int
    # defaults: what a config stored before these keys existed meant
    scale: tuple[int, int] | None = None  # test resize (long, short), keep ratio
    size_divisor: int | None = None
    num_workers: int = 0


@dataclass(frozen=True)
class ProfileConfig:
    input_size: tuple[int, int]
    num_classes: int | None
    warmup: int
    repeats: int
    threads: int
    device: str
    precision: str


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    root: str
    raw_dir: str
    options: dict[str, Any]
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    base_size: tuple[int, int] | None
    # defaults: what a config stored before these keys existed meant (neither step)
    cat_max_ratio: float = 1.0
    photometric_distortion: bool = False


@dataclass(frozen=True)
class RunConfig:
    experiment: str
    dataset: DatasetConfig
    model: str
    classifier: str
    classifier_params: dict[str, Any]
    seed: int
    train: TrainConfig
    evaluate: EvalConfig
    profile: ProfileConfig
    tracking_uri: str
    weights_dir: str
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return f"{self.model}/{self.classifier}/seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Hash of everything that changes the trained model (not paths, not the tracking URI)."""
        relevant = self.to_dict()
        for key in ("run_dir", "tracking_uri", "weights_dir", "evaluate", "profile", "extra"):
            relevant.pop(key)
        relevant["dataset"].pop("root")
        relevant["dataset"].pop("raw_dir")
        relevant["train"] = {k: v for k, v in relevant["train"].items()
                             if k not in ("device", "num_workers", "threads", "log_every",
                                          "checkpoint_every")}
        optimizer = relevant["train"]["optimizer"]
        for key, default in _HASH_NEUTRAL_OPTIMIZER_DEFAULTS.items():
            if optimizer.get(key) == default:
                optimizer.pop(key)
        blob = json.dumps(relevant, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def run_dir(params: dict, dataset: str, model: str, classifier: str, seed: int) -> Path:
    return Path(params["results_dir"]) / params["name"] / dataset / model / classifier / f"seed{seed}"


def resolve_run(params: dict, dataset: str, model: str, classifier: str, seed: int) -> RunConfig:
    """The validated config of one run of a (validated) params mapping."""
    for key, value, known in (
        ("datasets", dataset, list(params["datasets"])),
        ("models", model, params["models"]),
        ("classifiers", classifier, list(params["classifiers"])),
        ("seeds", seed, params["seeds"]),
    ):
        if value not in known:
            raise ConfigError(f"{key}: {value!r} is not part of this params file; it has: {known}")
    sections = {k: params[k] for k in ("train", "evaluate", "profile")}
    overrides = params.get("model_overrides", {}).get(model, {})
    sections = _deep_merge(sections, overrides)
    for key, section in sections.items():
        _raise_errors(_validator("properties", key), section, f"model_overrides.{model}.{key}")
    ds = params["datasets"][dataset]
    train = sections["train"]
    return RunConfig(
        experiment=params["name"],
        dataset=DatasetConfig(
            name=dataset,
            root=str(Path(params["data_dir"]) / dataset),
            raw_dir=str(Path(params["raw_dir"]) / dataset),
            options=dict(ds["options"]),
            crop_size=tuple(ds["crop_size"]),
            scale_range=tuple(ds["scale_range"]),
            base_size=tuple(ds["base_size"]) if ds["base_size"] else None,
            cat_max_ratio=ds["cat_max_ratio"],
            photometric_distortion=ds["photometric_distortion"],
        ),
        model=model,
        classifier=classifier,
        classifier_params=dict(params["classifiers"][classifier]),
        seed=seed,
        train=TrainConfig(
            **{k: v for k, v in train.items() if k not in ("optimizer", "schedule")},
            optimizer=OptimizerConfig(**{**train["optimizer"], "betas": tuple(train["optimizer"]["betas"])}),
            schedule=ScheduleConfig(**train["schedule"]),
        ),
        evaluate=EvalConfig(
            mode=ds["eval"]["mode"],
            crop_size=tuple(ds["eval"]["crop_size"]),
            stride=tuple(ds["eval"]["stride"]),
            scale=tuple(ds["eval"]["scale"]) if ds["eval"]["scale"] else None,
            size_divisor=ds["eval"]["size_divisor"],
            **sections["evaluate"],
        ),
        profile=ProfileConfig(**{**sections["profile"], "input_size": tuple(sections["profile"]["input_size"])}),
        tracking_uri=params["tracking"]["uri"],
        weights_dir=params["weights_dir"],
        run_dir=str(run_dir(params, dataset, model, classifier, seed)),
    )


def all_runs(params: dict) -> list[tuple[str, str, str, int]]:
    """Every (dataset, model, classifier, seed) of a params mapping, in a stable order."""
    return [
        (d, m, c, s)
        for d in params["datasets"]
        for m in params["models"]
        for c in params["classifiers"]
        for s in params["seeds"]
    ]


def paired_baselines(params: dict) -> list[tuple[str, str]]:
    """Every (dataset, model) whose classifiers are timed together against ``linear``
    (``python -m ssaseg profile-latency``): none unless the params have linear and another
    classifier."""
    classifiers = params["classifiers"]
    if "linear" not in classifiers or len(classifiers) < 2:
        return []
    return [(d, m) for d in params["datasets"] for m in params["models"]]


def run_config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig from :meth:`RunConfig.to_dict` (e.g. stored in a checkpoint)."""
    t = data["train"]
    return RunConfig(
        **{k: v for k, v in data.items() if k not in ("dataset", "train", "evaluate", "profile")},
        dataset=DatasetConfig(**{**data["dataset"],
                                 "crop_size": tuple(data["dataset"]["crop_size"]),
                                 "scale_range": tuple(data["dataset"]["scale_range"]),
                                 "base_size": tuple(data["dataset"]["base_size"]) if data["dataset"]["base_size"] else None}),
        train=TrainConfig(**{**t, "optimizer": OptimizerConfig(**{**t["optimizer"], "betas": tuple(t["optimizer"]["betas"])}),
                             "schedule": ScheduleConfig(**t["schedule"])}),
        evaluate=EvalConfig(**{**data["evaluate"], "crop_size": tuple(data["evaluate"]["crop_size"]),
                               "stride": tuple(data["evaluate"]["stride"]),
                               "scale": tuple(data["evaluate"]["scale"]) if data["evaluate"].get("scale") else None}),
        profile=ProfileConfig(**{**data["profile"], "input_size": tuple(data["profile"]["input_size"])}),
    )
