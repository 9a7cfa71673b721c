# Deploy: the node-side files a pattern runs and its task definitions, into the store.
# One marker per pattern, so an edit to the proxy re-deploys (and re-measures) only the
# patterns that run the proxy. Source files are ancient(): their content is in params.


rule deploy_pattern:
    input:
        tasks=get_task_files,
        node_files=get_pattern_node_files,
    output:
        P["deploy_marker"],  # results/{phase}/deploy/{pattern}.json
    log:
        P["deploy_log"],  # results/{phase}/logs/{pattern}/deploy.log
    params:
        tasks=get_task_digests,
        node_files=get_node_file_fingerprint,
    shell:
        "{RUN} deploy --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--output {output:q} {input.tasks:q} > {log:q} 2>&1"
