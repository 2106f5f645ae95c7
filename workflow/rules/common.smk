# Validate the params before any rule is defined, and build the target lists.
import copy

from snakemake.utils import validate

from ssaseg.config import all_runs, validate_params


validate(config, schema="../schemas/params.schema.yaml", set_default=True)
PARAMS = validate_params(copy.deepcopy(config), source=" + ".join(map(str, workflow.configfiles)))

NAME = PARAMS["name"]
DATA = PARAMS["data_dir"]
RESULTS = f"{PARAMS['results_dir']}/{NAME}"
REPORTS = f"{PARAMS['reports_dir']}/{NAME}"
LOGS = f"logs/{NAME}"
RUN = RESULTS + "/{dataset}/{model}/{classifier}/seed{seed}"
RUN_LOG = LOGS + "/{step}/{dataset}/{model}/{classifier}/seed{seed}.log"
# Every step gets the same params files Snakemake was given, in the same order.
PARAMS_ARGS = " ".join(f"--params {f}" for f in workflow.configfiles)
RUN_ARGS = (
    "--dataset {wildcards.dataset} --model {wildcards.model} "
    "--classifier {wildcards.classifier} --seed {wildcards.seed}"
)


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    classifier="[A-Za-z0-9_]+",
    seed="[0-9]+",


def rule_resources(rule_name):
    """Per-rule resources from the params' `resources:` section (used by the Slurm profile)."""
    return dict(PARAMS.get("resources", {}).get(rule_name, {}))


def run_files(pattern):
    """`pattern` (with RUN's wildcards) for every (dataset, model, classifier, seed) run."""
    return [
        pattern.format(dataset=d, model=m, classifier=c, seed=s)
        for d, m, c, s in all_runs(PARAMS)
    ]


def get_final_output():
    return [
        f"{REPORTS}/summary.md",
        f"{REPORTS}/summary.csv",
        f"{REPORTS}/miou_vs_latency.png",
        f"{REPORTS}/loss_curves.png",
    ]
