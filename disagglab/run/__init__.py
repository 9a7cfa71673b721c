"""Stage 4, run: one trial of a pattern on a node pair, over a transport, with its servers stopped.

Owns node pairs and their leasing (`fleet`), the transports (a local subprocess, AWS SSM), the
control-side run ledger a killed run leaves behind, the NIXL transport preflight, and the trial
orchestration (`trial.TrialRun`), which fills a `results.outcome.TrialOutcome`. It may import
`plan`, `tasks`, `deploy`, the results data model and the top-level modules.
"""
