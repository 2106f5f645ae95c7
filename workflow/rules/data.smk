# Datasets: prepare each one into the common layout under data/ (versioned with DVC), and create
# the MLflow store once, before parallel training jobs (two processes creating SQLite crash).


localrules:
    init_tracking,


rule prepare_dataset:
    output:
        manifest=f"{DATA}/{{dataset}}/manifest.json",
    params:
        params=PARAMS_ARGS,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    shell:
        "python -m ssaseg prepare {params.params} --dataset {wildcards.dataset} > {log} 2>&1"


rule init_tracking:
    output:
        marker=f"{RESULTS}/.tracking_ready",
    params:
        params=PARAMS_ARGS,
    log:
        f"{LOGS}/init_tracking.log",
    shell:
        "python -m ssaseg init-tracking {params.params} --marker {output.marker} > {log} 2>&1"
