# Deploy: node-side files once per phase, task definitions once per pattern, into the store.


rule deploy_node_files:
    input:
        get_node_files,
    output:
        "results/{phase}/deploy/node-files.json",
    log:
        "results/{phase}/logs/deploy-node-files.log",
    params:
        files=get_all_node_file_digests,
    shell:
        "{RUN} deploy-node-files --phase {wildcards.phase} --output {output:q} > {log:q} 2>&1"


rule deploy_tasks:
    input:
        get_task_files,
    output:
        "results/{phase}/deploy/tasks/{pattern}.json",
    log:
        "results/{phase}/logs/{pattern}/deploy-tasks.log",
    params:
        tasks=get_task_digests,
    shell:
        "{RUN} deploy-tasks --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--output {output:q} {input:q} > {log:q} 2>&1"
