"""Stage 2, the tasks: a pattern rendered into the argv/env task definitions its nodes run.

Owns the rendering from templates/, the node-side file sets each pattern runs, the digests the
Snakemake DAG uses as params (`dag.Phases`), and the check of rendered `vllm serve` command lines
against vLLM's own parser (it checks rendered text, so it lives here rather than in plan/).
It may import `plan` and the top-level modules.
"""
