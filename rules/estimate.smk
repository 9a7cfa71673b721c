# The cost and time estimate: results/<phase>/plan.md, also printed. It never runs a pattern.
# Its params follow the plan, the configuration, what each pattern would run and every finished
# result (calibration), so the estimate is redone exactly when one of them changed.


def get_estimate_fingerprint(wildcards):
    from disagglab.estimate.table import fingerprint

    plan = _plan_call(PHASES.plan, wildcards.phase)
    return _plan_call(fingerprint, plan, config, PHASES)


rule estimate:
    localrule: True
    output:
        P["estimate"],  # results/{phase}/plan.md
    log:
        P["estimate_log"],  # results/{phase}/logs/estimate.log
    params:
        inputs=get_estimate_fingerprint,
    shell:
        "{RUN} estimate {wildcards.phase} --output {output:q} 2> {log:q}"
