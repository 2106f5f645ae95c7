# Analyses beyond the summary table (issue 17; params `analysis:`): the training pixels per
# class that the report splits the delta IoU by, the synthetic shift sweep, common
# corruptions and the mechanism probes. Each is one `python -m ssaseg` step per run; the
# report (report.smk) takes whatever these produce.

rule count_pixels:
    input:
        manifest=rules.prepare_dataset.output.manifest,
    output:
        pixels=f"{RESULTS}/{{dataset}}/train_class_pixels.json",
    log:
        f"{LOGS}/count_pixels/{{dataset}}.log",
    shell:
        f"{PYTHON} -m ssaseg count-pixels {PARAMS_ARGS} --dataset {{wildcards.dataset}} "
        "--out {output.pixels} > {log} 2>&1"


rule evaluate_shift:
    input:
        model=rules.train_model.output.model,
    output:
        counts=f"{RUN}/shift_sweep_counts.npz",
        sweep=f"{RUN}/shift_sweep.json",
    params:
        settings=run_settings("evaluate"),
        strengths=repr(ANALYSIS["shift_sweep"]),
    log:
        RUN_LOG.replace("{step}", "evaluate_shift"),
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg evaluate-shift {PARAMS_ARGS} {RUN_ARGS} --no-progress > {{log}} 2>&1"


rule evaluate_corruptions:
    input:
        model=rules.train_model.output.model,
    output:
        table=f"{RUN}/corruptions.json",
    params:
        settings=run_settings("evaluate"),
        corruptions=repr([ANALYSIS[k] for k in ("corruptions", "severities", "corruption_seed")]),
    log:
        RUN_LOG.replace("{step}", "evaluate_corruptions"),
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg evaluate-corruptions {PARAMS_ARGS} {RUN_ARGS} --no-progress "
        "> {log} 2>&1"


rule probe_model:
    input:
        model=rules.train_model.output.model,
    output:
        table=f"{RUN}/probes.csv",
        tsne=f"{RUN}/tsne.png",
        summary=f"{RUN}/probes.json",
    params:
        settings=run_settings("evaluate"),
        image=ANALYSIS["probe_image"],
    log:
        RUN_LOG.replace("{step}", "probe"),
    threads: PARAMS["evaluate"]["threads"]
    resources:
        **{**EVALUATE_RESOURCES, "cpus_per_task": EVALUATE_CPUS},
    shell:
        f"{PYTHON} -m ssaseg probe {PARAMS_ARGS} {RUN_ARGS} > {{log}} 2>&1"
