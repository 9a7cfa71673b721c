"""Workloads other than unique random prompts (plan `workload`), run by ../../benchmark_workload.py.

Kept apart from the default client so that a pattern without a workload runs exactly the
files it ran before workloads existed, and its finished results stay current.
"""
