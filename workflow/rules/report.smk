# Report: Markdown/CSV tables and PNG plots over every run of the params file.


localrules:
    build_report,


rule build_report:
    input:
        metrics=run_files(rules.evaluate_model.output.metrics),
        profiles=run_files(rules.profile_model.output.profile),
        train_logs=run_files(rules.train_model.output.train_log),
        paired=baseline_files(rules.profile_paired_latency.output.result),
        per_image=run_files(rules.evaluate_model.output.per_image),
        train_pixels=expand(rules.count_pixels.output.pixels, dataset=list(PARAMS["datasets"])),
        analyses=analysis_targets(),
    output:
        summary=f"{REPORTS}/summary.md",
        table=f"{REPORTS}/summary.csv",
        latency_plot=f"{REPORTS}/miou_vs_latency.png",
        loss_plot=f"{REPORTS}/loss_curves.png",
        paired_latency=f"{REPORTS}/paired_latency.csv",
        differences=f"{REPORTS}/paired_differences.csv",
        per_class_plot=f"{REPORTS}/per_class_delta.png",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        f"{LOGS}/build_report.log",
    shell:
        f"{PYTHON} -m ssaseg report {PARAMS_ARGS} --out-dir {{params.out_dir}} > {{log}} 2>&1"
