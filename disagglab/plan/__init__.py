"""Stage 1, the plan: what the user asked for, validated before anything is rendered or booked.

Owns the plan's JSON Schema checks and model (`model.Plan`, `model.Pattern`, the cross-field
rules), the pipeline configuration and its checks, the test-only fault grammar and the
substitution that points a GPU plan at real vLLM on this machine. It may import only the
top-level modules (`errors`, `paths`, `hashing`, `aws`); every later stage reads it.
"""
