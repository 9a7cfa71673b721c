"""Parts of the vLLM stand-in; the entry point is ../vllm_sim.py (docs/node-programs.md)."""
