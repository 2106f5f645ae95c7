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


# Paired latency: one job per (dataset, model) builds the baseline with every classifier, loads
# each run's trained weights (the params' first seed) and times them in one process, interleaved
# (ssaseg/engine/paired_latency.py). Locally it claims every core, so that nothing runs beside
# it; on Slurm it is one job on one GPU (resources.profile_paired_latency, --exclusive).
PAIRED_SEED = PARAMS["seeds"][0]


def paired_models(wildcards):
    """The trained model of each classifier of this baseline (first seed)."""
    return [
        rules.train_model.output.model.format(
            dataset=wildcards.dataset, model=wildcards.model, classifier=c, seed=PAIRED_SEED
        )
        for c in PARAMS["classifiers"]
    ]


def paired_settings(wildcards):
    """Changes exactly when what the measurement depends on changes (rerun-triggers: params)."""
    profile = run_config(wildcards.dataset, wildcards.model, "linear", PAIRED_SEED).profile
    return repr((profile, PARAMS["paired_latency"], list(PARAMS["classifiers"])))


rule profile_paired_latency:
    input:
        models=paired_models,
    output:
        result=f"{RESULTS}/{{dataset}}/{{model}}/paired_latency.json",
        table=f"{RESULTS}/{{dataset}}/{{model}}/paired_latency.csv",
    params:
        settings=paired_settings,
        out_dir=lambda wildcards, output: os.path.dirname(output.result),
    log:
        f"{LOGS}/paired_latency/{{dataset}}/{{model}}.log",
    threads: workflow.cores
    resources:
        **rule_resources("profile_paired_latency"),
    shell:
        f"{PYTHON} -m ssaseg profile-latency {PARAMS_ARGS} --dataset {{wildcards.dataset}} "
        f"--model {{wildcards.model}} --seed {PAIRED_SEED} --out-dir {{params.out_dir}} "
        "> {log} 2>&1"
