"""Stage 3, deploy: node-side files and task definitions copied into the store nodes read.

Owns the storage back ends (a local folder, S3) and the deploy step with its per-pattern marker.
It may import `plan`, `tasks`, the results data model (for its failure record) and the
top-level modules; it knows nothing about how a node runs what it deployed.
"""
