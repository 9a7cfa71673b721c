# Task definitions: one JSON per role of a pattern, rendered from templates/.


rule render_task:
    output:
        P["task"],  # results/{phase}/tasks/{pattern}/{role}.json
    log:
        P["task_log"],  # results/{phase}/logs/{pattern}/render-{role}.log
    params:
        digest=get_task_digest,
    shell:
        "{RUN} render --phase {wildcards.phase} --pattern {wildcards.pattern} "
        "--role {wildcards.role} --output {output:q} > {log:q} 2>&1"
