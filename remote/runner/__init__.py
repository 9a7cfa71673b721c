"""The parts of the node runner (remote/task_runner.py) that run only after a fetch succeeded.

They come to the node with the pattern's other files, so the entry file imports them only
when a step needs them (start, bench, preflight); fetch, stop and collect never do. Each
part imports the entry's shared names (StepError, Ledger, the file helpers) as `task_runner`.
See docs/node-runner.md.
"""
