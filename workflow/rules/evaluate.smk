# Evaluation on the val split: confusion-matrix mIoU, per-class IoU, pixel accuracy.

EVALUATE_RESOURCES = rule_resources("evaluate_model")
# resources.evaluate_model.cpus_per_task, or evaluate.threads plus the DataLoader workers
EVALUATE_CPUS = EVALUATE_RESOURCES.get(
    "cpus_per_task", PARAMS["evaluate"]["threads"] + PARAMS["evaluate"]["num_workers"]
)


rule evaluate_model:
    input:
        model=rules.train_model.output.model,
    output:
        metrics=f"{RUN}/eval.json",
        per_class=f"{RUN}/per_class_iou.csv",
    params:
        settings=run_settings("evaluate"),
    log:
        RUN_LOG.replace("{step}", "evaluate"),
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg evaluate {PARAMS_ARGS} {RUN_ARGS} --no-progress > {{log}} 2>&1"
