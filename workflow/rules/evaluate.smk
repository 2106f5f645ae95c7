# Evaluation on the val split: confusion-matrix mIoU, per-class IoU, pixel accuracy.


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
        **rule_resources("evaluate_model"),
    shell:
        f"{PYTHON} -m ssaseg evaluate {PARAMS_ARGS} {RUN_ARGS} --no-progress > {{log}} 2>&1"
