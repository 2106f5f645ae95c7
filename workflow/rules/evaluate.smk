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
        per_image=f"{RUN}/per_image_counts.npz",  # the image bootstrap resamples these
    params:
        settings=run_settings("evaluate"),
    log:
        RUN_LOG.replace("{step}", "evaluate"),
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg evaluate {PARAMS_ARGS} {RUN_ARGS} --no-progress > {{log}} 2>&1"


rule evaluate_released:
    # a released whole-segmentor checkpoint (params `checkpoints:`) evaluated as this model +
    # classifier; no training: outputs beside the seeds, in <model>/<classifier>/released/
    input:
        checkpoint=lambda wildcards: ancient(
            PARAMS["checkpoints"][wildcards.dataset][wildcards.model][wildcards.classifier]
        ),
        manifest=f"{DATA}/{{dataset}}/manifest.json",
        tracking=rules.init_tracking.output.marker,
    output:
        metrics=f"{RELEASED}/eval.json",
        per_class=f"{RELEASED}/per_class_iou.csv",
    params:
        settings=lambda wildcards: repr(
            run_config(wildcards.dataset, wildcards.model, wildcards.classifier,
                       PARAMS["seeds"][0]).evaluate
        ),
    log:
        f"{LOGS}/evaluate_released/{{dataset}}/{{model}}/{{classifier}}.log",
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg evaluate {PARAMS_ARGS} --dataset {{wildcards.dataset}} "
        f"--model {{wildcards.model}} --classifier {{wildcards.classifier}} "
        f"--seed {PARAMS['seeds'][0]} --released --no-progress > {{log}} 2>&1"
