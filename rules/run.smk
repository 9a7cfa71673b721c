# Measured runs. A trial reruns only when what it runs changed: its task definitions or
# the node-side files it uses (their sha256s are the params of its deploy and run jobs).
# Deleting an intermediate file (a task, a deploy marker) never re-measures a pattern.


rule run_trial:
    input:
        tasks=get_task_files,
        deployed="results/{phase}/deploy/{pattern}.json",
    output:
        "results/{phase}/trials/{pattern}/{trial}.json",
    log:
        "results/{phase}/logs/{pattern}/trial-{trial}/run.log",
    params:
        tasks=get_task_digests,
        node_files=get_node_file_fingerprint,
    resources:
        node_pair=1,
    # Trial k of every pattern before trial k+1 of any: repeats spread over the run's drift.
    priority: trial_priority
    shell:
        "{RUN} run-pattern --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--trial {wildcards.trial} --output {output:q} > {log:q} 2>&1"


# A pattern's result folds its trials (means, spread, 95% t-intervals). Raising `repeats`
# adds inputs: only the missing trials are measured, then this cheap step reruns.
rule run_pattern:
    input:
        get_trial_results,
    output:
        "results/{phase}/runs/{pattern}.json",
    log:
        "results/{phase}/logs/{pattern}/aggregate.log",
    shell:
        "{RUN} aggregate --output {output:q} {input:q} > {log:q} 2>&1"


rule layer_done:
    input:
        get_layer_results,
    output:
        "results/{phase}/{layer}.done",
    log:
        "results/{phase}/logs/layer-{layer}.log",
    shell:
        "{RUN} layer-done --phase {wildcards.phase} --layer {wildcards.layer} "
        "--output {output:q} > {log:q} 2>&1"


rule phase_done:
    input:
        get_phase_layers,
    output:
        "results/{phase}/all.done",
    log:
        "results/{phase}/logs/all.log",
    shell:
        "{RUN} phase-done --phase {wildcards.phase} --output {output:q} {input:q} > {log:q} 2>&1"


rule compare_phases:
    output:
        "results/compare/{phase_a}_vs_{phase_b}.html",
    log:
        "results/compare/{phase_a}_vs_{phase_b}.log",
    params:
        results=get_compared_results,
    shell:
        "{RUN} compare {wildcards.phase_a} {wildcards.phase_b} --no-fail --html {output:q} > {log:q} 2>&1"
