# Datasets: download the archives (on the login node: compute nodes often have no internet),
# prepare each dataset into the common layout under data/ (versioned with DVC), and create the
# MLflow store once, before parallel training jobs (two processes creating SQLite crash).
#
# Archives, weights and prepared datasets are shared by every params file. Their rules therefore
# track only what shapes their output (a dataset's prepare options), not which params file
# asked for them: the params file is written into the command, where it triggers no re-run, so
# running another table never re-prepares (and so re-trains) what an earlier one made.


localrules:
    download_archive,
    fetch_weights,
    init_tracking,


rule download_archive:
    output:
        # protected: a forced re-run must not delete an 11 GB archive placed by hand
        archive=protected(f"{PARAMS['raw_dir']}/{{dataset}}/{{filename}}"),
    log:
        f"{LOGS}/download/{{dataset}}/{{filename}}.log",
    shell:
        f"{PYTHON} -m ssaseg download {PARAMS_ARGS} --dataset {{wildcards.dataset}} "
        "--archive {wildcards.filename} --no-progress > {log} 2>&1"


rule prepare_dataset:
    input:
        archives=dataset_archives,
    output:
        manifest=f"{DATA}/{{dataset}}/manifest.json",
    params:
        options=lambda wildcards: repr(sorted(PARAMS["datasets"][wildcards.dataset]["options"].items())),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    resources:
        **rule_resources("prepare_dataset"),
    shell:
        f"{PYTHON} -m ssaseg prepare {PARAMS_ARGS} --dataset {{wildcards.dataset}} > {{log}} 2>&1"


rule init_tracking:
    output:
        marker=f"{RESULTS}/.tracking_ready",
    log:
        f"{LOGS}/init_tracking.log",
    shell:
        f"{PYTHON} -m ssaseg init-tracking {PARAMS_ARGS} --marker {{output.marker}} > {{log}} 2>&1"


rule fetch_weights:
    wildcard_constraints:
        filename="|".join(map(re.escape, WEIGHTS_BY_FILE)),
    output:
        weights=protected(f"{PARAMS['weights_dir']}/{{filename}}"),
    params:
        name=lambda wildcards: WEIGHTS_BY_FILE[wildcards.filename],
    log:
        f"{LOGS}/fetch_weights/{{filename}}.log",
    shell:
        f"{PYTHON} -m ssaseg fetch-weights {PARAMS_ARGS} --name {{params.name}} "
        "--no-progress > {log} 2>&1"
