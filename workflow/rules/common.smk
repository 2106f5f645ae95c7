# Validate the params before any rule is defined, and build the target lists.
import copy
import functools
import os
import re
import sys

from snakemake.utils import validate

from ssaseg.config import all_runs, paired_baselines, resolve_run, validate_params
from ssaseg.data.download import archive_paths
from ssaseg.weights import CATALOG as WEIGHTS_CATALOG, weights_for_model, weights_path


validate(config, schema="../schemas/params.schema.yaml", set_default=True)
PARAMS = validate_params(copy.deepcopy(config), source=" + ".join(map(str, workflow.configfiles)))

NAME = PARAMS["name"]
DATA = PARAMS["data_dir"]
RESULTS = f"{PARAMS['results_dir']}/{NAME}"
REPORTS = f"{PARAMS['reports_dir']}/{NAME}"
LOGS = f"logs/{NAME}"
RUN = f"{RESULTS}/{{dataset}}/{{model}}/{{classifier}}/seed{{seed}}"
RELEASED = f"{RESULTS}/{{dataset}}/{{model}}/{{classifier}}/released"  # params `checkpoints:`
RUN_LOG = f"{LOGS}/{{step}}/{{dataset}}/{{model}}/{{classifier}}/seed{{seed}}.log"
WEIGHTS_BY_FILE = {spec.filename: name for name, spec in WEIGHTS_CATALOG.items()}
PYTHON = sys.executable  # the interpreter running Snakemake, i.e. the one with ssaseg installed
# Every step gets the same params files Snakemake was given, in the same order. They are written
# into the shell commands, not passed as rule params: which file asked for a job must not
# re-run it; what the job depends on is tracked instead (run_settings, a dataset's options).
PARAMS_ARGS = " ".join(f"--params {f}" for f in workflow.configfiles)
RUN_ARGS = (
    "--dataset {wildcards.dataset} --model {wildcards.model} "
    "--classifier {wildcards.classifier} --seed {wildcards.seed}"
)


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    classifier="[A-Za-z0-9_-]+",  # <classifier> or a variant, <classifier>-<label>
    seed="[0-9]+",


def rule_resources(rule_name):
    """Per-rule resources from the params' `resources:` section (used by the Slurm profile);
    null values are left out (not requested)."""
    section = PARAMS.get("resources", {}).get(rule_name, {})
    return {key: value for key, value in section.items() if value is not None}


def run_files(pattern):
    """`pattern` (with RUN's wildcards) for every (dataset, model, classifier, seed) run."""
    return [
        pattern.format(dataset=d, model=m, classifier=c, seed=s)
        for d, m, c, s in all_runs(PARAMS)
    ]


def baseline_files(pattern):
    """`pattern` (with {dataset} and {model}) for every baseline timed by profile_paired_latency
    (none unless the params have linear and another classifier)."""
    return [pattern.format(dataset=d, model=m) for d, m in paired_baselines(PARAMS)]


def dataset_archives(wildcards):
    """The raw archives a dataset is prepared from (none for the synthetic dataset)."""
    return ancient(archive_paths(wildcards.dataset, f"{PARAMS['raw_dir']}/{wildcards.dataset}"))


def train_setting(model, key):
    """train.<key> of a model's runs, after its model_overrides."""
    override = PARAMS.get("model_overrides", {}).get(model, {}).get("train", {})
    return override.get(key, PARAMS["train"][key])


def model_weights(wildcards):
    """The pretrained backbone a run starts from, if the params ask for one."""
    if not train_setting(wildcards.model, "pretrained"):
        return []
    return [str(weights_path(weights_for_model(wildcards.model), PARAMS["weights_dir"]))]


def run_settings(section):
    """A rule param that changes exactly when this run's `section` settings change, so that
    Snakemake (rerun-triggers: params) re-runs the job after an edit of the params file that
    affects it, and no other: "train" is the hash of everything that shapes the trained model."""

    def settings(wildcards):
        cfg = run_config(wildcards.dataset, wildcards.model, wildcards.classifier, wildcards.seed)
        return cfg.config_hash() if section == "train" else repr(getattr(cfg, section))

    return settings


@functools.cache
def run_config(dataset, model, classifier, seed):
    """The resolved config of one run, once per run however many rules ask (planning speed)."""
    return resolve_run(PARAMS, dataset, model, classifier, int(seed))


def released_outputs():
    """eval.json of every released checkpoint the params' `checkpoints:` name."""
    return [
        f"{RELEASED}/eval.json".format(dataset=d, model=m, classifier=c)
        for d, models in PARAMS.get("checkpoints", {}).items()
        for m, classifiers in models.items()
        for c in classifiers
    ]


ANALYSIS = PARAMS["analysis"]  # issue 17's analyses (analysis.smk)


def analysis_runs(pattern, every_seed=False):
    """`pattern` for the runs the analyses cover: classifiers in analysis.classifiers and,
    unless ``every_seed``, seeds in analysis.seeds (null = all)."""
    seeds = ANALYSIS["seeds"]
    return [
        pattern.format(dataset=d, model=m, classifier=c, seed=s)
        for d, m, c, s in all_runs(PARAMS)
        if c in ANALYSIS["classifiers"] and (every_seed or seeds is None or s in seeds)
    ]


def analysis_targets():
    """Every analysis output the params switch on (inputs of the report)."""
    targets = []
    if ANALYSIS["shift_sweep"] and "synthetic" in PARAMS["datasets"]:
        targets += [t for t in analysis_runs(rules.evaluate_shift.output.sweep, every_seed=True)
                    if "/synthetic/" in t]
    if ANALYSIS["corruptions"]:
        targets += analysis_runs(rules.evaluate_corruptions.output.table)
    if ANALYSIS["probes"]:
        targets += analysis_runs(rules.probe_model.output.summary)
    return targets


def get_final_output():
    return [
        f"{REPORTS}/summary.md",
        f"{REPORTS}/summary.csv",
        f"{REPORTS}/miou_vs_latency.png",
        f"{REPORTS}/loss_curves.png",
        *released_outputs(),
        f"{REPORTS}/paired_latency.csv",
    ]
