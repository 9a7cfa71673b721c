"""How long and how much a phase will still take, before it runs: the time model and its table.

Owns the timing model of one trial, its calibration from finished results and Snakemake's logs,
and the plan.md table. It reads plans, the DAG's digests and results; nothing imports it
except `cli` and rules/estimate.smk.
"""
