"""Run safety: one pipeline run per phase, what a killed run left behind, and `recover`.

Owns the phase lock, the checks rules/common.smk makes while Snakemake parses (a run refused for
leftovers or a held phase), the reading and editing of Snakemake's own `.snakemake/` state, and
the recover command. It may import every earlier stage (recover stops servers through the run
stage's transports and writes the results data model's failure record), never `report` or `cli`.
"""
