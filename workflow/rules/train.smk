# Training: one job per (dataset, model, classifier, seed). A restarted job resumes from
# <run>/checkpoints/last.pt, which is not a declared output and survives a failed job.
# train.gpus > 1: one job runs torchrun with one DDP process per GPU (gloo on a CPU-only node).
# The command is exec'd, so that Slurm's SIGTERM (time limit, preemption, --signal) reaches the
# trainer itself: it finishes the iteration, writes its checkpoint and exits with code 75.


def train_launcher(wildcards):
    """`python -m ssaseg`, or torchrun (as `python -m torch.distributed.run`, the same program,
    from the interpreter running Snakemake) with one process per GPU."""
    gpus = train_setting(wildcards.model, "gpus")
    if gpus == 1:
        return f"{PYTHON} -m ssaseg"
    return f"{PYTHON} -m torch.distributed.run --standalone --nproc-per-node {gpus} -m ssaseg"


def train_threads(wildcards):
    """CPU threads of the whole job: train.threads per process."""
    return train_setting(wildcards.model, "threads") * train_setting(wildcards.model, "gpus")


TRAIN_RESOURCES = rule_resources("train_model")


def train_gpu_request(wildcards):
    """resources.train_model.gpu, or the run's train.gpus when that is null."""
    requested = TRAIN_RESOURCES.get("gpu")
    return train_setting(wildcards.model, "gpus") if requested is None else requested


def train_cpus_per_task(wildcards):
    """resources.train_model.cpus_per_task, or (threads + data workers) per process."""
    if "cpus_per_task" in TRAIN_RESOURCES:
        return TRAIN_RESOURCES["cpus_per_task"]
    per_process = train_setting(wildcards.model, "threads") + train_setting(
        wildcards.model, "num_workers"
    )
    return per_process * train_setting(wildcards.model, "gpus")


rule train_model:
    input:
        manifest=rules.prepare_dataset.output.manifest,
        tracking=ancient(rules.init_tracking.output.marker),  # created once, never a re-run cause
        weights=model_weights,
    output:
        model=f"{RUN}/model.pt",
        train_log=f"{RUN}/train_log.csv",
    params:
        launcher=train_launcher,
        settings=run_settings("train"),
    log:
        RUN_LOG.replace("{step}", "train"),
    threads: train_threads
    resources:
        **{
            **TRAIN_RESOURCES,
            "gpu": train_gpu_request,
            "cpus_per_task": train_cpus_per_task,
        },
    shell:
        f"exec {{params.launcher}} train {PARAMS_ARGS} {RUN_ARGS} > {{log}} 2>&1"
