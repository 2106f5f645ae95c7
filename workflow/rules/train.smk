# Training: one job per (dataset, model, classifier, seed). A restarted job resumes from
# <run>/checkpoints/last.pt, which is not a declared output and survives a failed job.


rule train_model:
    input:
        manifest=rules.prepare_dataset.output.manifest,
        tracking=rules.init_tracking.output.marker,
    output:
        model=f"{RUN}/model.pt",
        train_log=f"{RUN}/train_log.csv",
    params:
        params=PARAMS_ARGS,
    log:
        RUN_LOG.replace("{step}", "train"),
    threads: PARAMS["train"]["threads"]
    resources:
        **rule_resources("train_model"),
    shell:
        f"python -m ssaseg train {{params.params}} {RUN_ARGS} > {{log}} 2>&1"
