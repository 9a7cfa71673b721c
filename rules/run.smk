# Measured runs. A trial reruns only when what it runs changed: its task definitions or
# the node-side files it uses (their sha256s are the params of its deploy and run jobs).
# Deleting an intermediate file (a task, a deploy marker) never re-measures a pattern.


rule run_trial:
    input:
        tasks=get_task_files,
        deployed=P["deploy_marker"],  # results/{phase}/deploy/{pattern}.json
    output:
        P["trial"],  # results/{phase}/trials/{pattern}/{trial}.json
    log:
        P["trial_log"],  # results/{phase}/logs/{pattern}/trial-{trial}/run.log
    params:
        tasks=get_task_digests,
        node_files=get_node_file_fingerprint,
    resources:
        node_pair=1,
    # Trial k of every pattern before trial k+1 of any: repeats spread over the run's drift.
    priority: trial_priority
    shell:
        "{RUN} run-trial --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--trial {wildcards.trial} --output {output:q} > {log:q} 2>&1"


# A pattern's result (runs/<pattern>.json) folds its trials (means, spread, 95% t-intervals). Raising `repeats`
# adds inputs: only the missing trials are measured, then this cheap step reruns.
rule fold_trials:
    input:
        get_trial_results,
    output:
        P["result"],  # results/{phase}/runs/{pattern}.json
    log:
        P["fold_log"],  # results/{phase}/logs/{pattern}/aggregate.log
    shell:
        "{RUN} fold --output {output:q} {input:q} > {log:q} 2>&1"


rule layer_done:
    input:
        get_layer_results,
    output:
        P["layer_marker"],  # results/{phase}/{layer}.done
    log:
        P["layer_log"],  # results/{phase}/logs/layer-{layer}.log
    shell:
        "{RUN} layer-done --phase {wildcards.phase} --layer {wildcards.layer} "
        "--output {output:q} > {log:q} 2>&1"


rule phase_done:
    input:
        get_phase_layers,
    output:
        P["phase_marker"],  # results/{phase}/all.done
    log:
        P["phase_log"],  # results/{phase}/logs/all.log
    shell:
        "{RUN} phase-done --phase {wildcards.phase} --output {output:q} {input:q} > {log:q} 2>&1"


rule compare_phases:
    output:
        P["compare_html"],  # results/compare/{phase_a}_vs_{phase_b}.html
    log:
        P["compare_log"],  # results/compare/{phase_a}_vs_{phase_b}.log
    params:
        results=get_compared_results,
    shell:
        "{RUN} compare {wildcards.phase_a} {wildcards.phase_b} --no-fail --html {output:q} > {log:q} 2>&1"
