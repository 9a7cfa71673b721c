"""Parts of the benchmark client; the entry point is ../benchmark_common.py (docs/node-programs.md)."""
