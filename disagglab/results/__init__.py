"""Stage 5, results: what a trial leaves in results/<phase>/ and how it is read back.

Two layers in one folder. The data model sits below `run` (so the run stage can fill it and
the deploy and recover steps can write the same failure record): `outcome`, `records`, `fold`.
The readers sit above `run` and `guard` (they ask whether a run is in flight): `status` and
the parse-time sweeps. docs/ARCHITECTURE.md gives the exact order; tests/test_layering.py holds it.
"""
