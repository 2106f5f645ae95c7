# Profiling: params, FLOPs, latency, peak memory. Locally the job claims every core so that no
# other job runs beside it and disturbs the latency (it still uses profile.threads threads).


rule profile_model:
    input:
        model=rules.train_model.output.model,
    output:
        profile=f"{RUN}/profile.json",
    params:
        settings=run_settings("profile"),
    log:
        RUN_LOG.replace("{step}", "profile"),
    threads: workflow.cores
    resources:
        **rule_resources("profile_model"),
    shell:
        f"{PYTHON} -m ssaseg profile {PARAMS_ARGS} {RUN_ARGS} > {{log}} 2>&1"
