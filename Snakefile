# ssaseg: download -> prepare -> train -> evaluate -> profile -> report.
#   snakemake --cores all                                   # params/default.yaml, locally
#   snakemake --cores all --configfile params/<table>.yaml  # a paper table
#   snakemake --profile slurm --configfile params/<table>.yaml   # on a Slurm cluster
from snakemake.utils import min_version

min_version("8.0")


# The params file comes from the profile (profiles/default: params/default.yaml) or from
# --configfile; it is not set here, so that a paper table never inherits the default's runs.
if not config:

    raise WorkflowError("no params file: run with --configfile params/<name>.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
