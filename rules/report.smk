# What users look at: MLflow tracking, the summary table and the phase report. They cover
# the results that exist (missing patterns are listed, not run); params follow their sha256.


rule track_phase:
    localrule: True
    output:
        "results/{phase}/mlflow.json",
    log:
        "results/{phase}/logs/mlflow.log",
    params:
        results=get_phase_result_digests,
    resources:
        mlflow_db=1,
    shell:
        "{RUN} track --phase {wildcards.phase} --output {output:q} > {log:q} 2>&1"
