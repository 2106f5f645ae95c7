# Profiling: params, FLOPs, latency, peak memory. Locally the job claims every core so that no
# other job runs beside it and disturbs the latency (it still uses profile.threads threads).


rule profile_model:
    input:
        model=rules.train_model.output.model,
    output:
        profile=f"{RUN}/profile.json",
    params:
        python=PYTHON,
        params=PARAMS_ARGS,
    log:
        RUN_LOG.replace("{step}", "profile"),
    threads: workflow.cores
    resources:
        **rule_resources("profile_model"),
    shell:
        f"{{params.python}} -m ssaseg profile {{params.params}} {RUN_ARGS} > {{log}} 2>&1"
