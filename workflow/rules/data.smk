# Datasets: download the archives (on the login node: compute nodes often have no internet),
# prepare each dataset into the common layout under data/ (versioned with DVC), and create the
# MLflow store once, before parallel training jobs (two processes creating SQLite crash).


localrules:
    download_archive,
    fetch_weights,
    init_tracking,


rule download_archive:
    output:
        # protected: a forced re-run must not delete an 11 GB archive placed by hand
        archive=protected(f"{PARAMS['raw_dir']}/{{dataset}}/{{filename}}"),
    params:
        python=PYTHON,
        params=PARAMS_ARGS,
    log:
        f"{LOGS}/download/{{dataset}}/{{filename}}.log",
    shell:
        "{params.python} -m ssaseg download {params.params} --dataset {wildcards.dataset} "
        "--archive {wildcards.filename} --no-progress > {log} 2>&1"


rule prepare_dataset:
    input:
        archives=dataset_archives,
    output:
        manifest=f"{DATA}/{{dataset}}/manifest.json",
    params:
        python=PYTHON,
        params=PARAMS_ARGS,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    resources:
        **rule_resources("prepare_dataset"),
    shell:
        "{params.python} -m ssaseg prepare {params.params} --dataset {wildcards.dataset} > {log} 2>&1"


rule init_tracking:
    output:
        marker=f"{RESULTS}/.tracking_ready",
    params:
        python=PYTHON,
        params=PARAMS_ARGS,
    log:
        f"{LOGS}/init_tracking.log",
    shell:
        "{params.python} -m ssaseg init-tracking {params.params} --marker {output.marker} > {log} 2>&1"


rule fetch_weights:
    wildcard_constraints:
        filename="|".join(map(re.escape, WEIGHTS_BY_FILE)),
    output:
        weights=protected(f"{PARAMS['weights_dir']}/{{filename}}"),
    params:
        python=PYTHON,
        params=PARAMS_ARGS,
        name=lambda wildcards: WEIGHTS_BY_FILE[wildcards.filename],
    log:
        f"{LOGS}/fetch_weights/{{filename}}.log",
    shell:
        "{params.python} -m ssaseg fetch-weights {params.params} --name {params.name} "
        "--no-progress > {log} 2>&1"
