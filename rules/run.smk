# Measured runs. Inputs are ancient(): whether a pattern reruns is decided by its params
# (task and node-file sha256s), never by timestamps, so GPU hours are not re-paid for a touch.


rule run_pattern:
    input:
        tasks=lambda wc: [ancient(f) for f in get_task_files(wc)],
        node_files=ancient("results/{phase}/deploy/node-files.json"),
        deployed=ancient("results/{phase}/deploy/tasks/{pattern}.json"),
    output:
        "results/{phase}/runs/{pattern}.json",
    log:
        "results/{phase}/logs/{pattern}/run.log",
    params:
        tasks=get_task_digests,
        node_files=get_node_file_fingerprint,
    resources:
        node_pair=1,
    shell:
        "{RUN} run-pattern --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--output {output:q} > {log:q} 2>&1"


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
