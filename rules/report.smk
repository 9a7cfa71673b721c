# What users look at: MLflow tracking, the summary table and the phase report. They cover
# the results that exist (missing patterns are listed, not run); params follow their sha256,
# and the price table (the cost per million output tokens of the answer section).


def get_price_table(wildcards):
    """estimate.prices_usd_per_hour as canonical JSON: a changed price rebuilds the costs, nothing else."""
    return json.dumps(config.get("estimate", {}).get("prices_usd_per_hour", {}), sort_keys=True)


rule track_phase:
    localrule: True
    output:
        P["mlflow_marker"],  # results/{phase}/mlflow.json
    log:
        P["mlflow_log"],  # results/{phase}/logs/mlflow.log
    params:
        results=get_phase_result_digests,
        prices=get_price_table,
    resources:
        mlflow_db=1,
    shell:
        "{RUN} track --phase {wildcards.phase} --output {output:q} > {log:q} 2>&1"


rule summary:
    output:
        P["summary"],  # results/{phase}/summary.csv
    log:
        P["summary_log"],  # results/{phase}/logs/summary.log
    params:
        results=get_phase_result_digests,
        prices=get_price_table,
    shell:
        "{RUN} summary --phase {wildcards.phase} --output {output:q} > {log:q} 2>&1"


rule report:
    input:
        summary=P["summary"],  # results/{phase}/summary.csv
        mlflow=P["mlflow_marker"],  # results/{phase}/mlflow.json
    output:
        html=report(P["report_html"], category="Report"),
        md=P["report_md"],  # results/{phase}/report.md
        plots=report(directory(P["report_plots"]), patterns=["{name}.png"], category="Plots"),
    log:
        P["report_log"],  # results/{phase}/logs/report.log
    params:
        results=get_phase_result_digests,
        prices=get_price_table,
    shell:
        "{RUN} report --phase {wildcards.phase} --html {output.html:q} --md {output.md:q} "
        "--plots {output.plots:q} > {log:q} 2>&1"
