# Shared helpers: configuration, lazy plan loading, wildcard constraints, input functions.
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from disagglab.plan.config import ENV_VAR, load_sources, validate_config
from disagglab.plan.config_checks import check_discovery, check_environment
from disagglab.errors import InputError
from disagglab.plan.faults import FaultError, check_environment as check_fault_environment
from disagglab.guard.startup import RunRefused, check_phases, check_target_plans, forward_sigterm
from disagglab.paths import PLANS_DIR, RULE_PATHS, PhaseLayout
from disagglab.results.sweeps import quarantine_corrupt_results, sweep_deleted_results, sweep_stale_layer_markers
from disagglab.tasks.dag import Phases

def _refuse(exc):
    """Stop on bad input (config, plan, fault variable) with its problems, one per line, and exit status 1.

    Raised here, a WorkflowError would print as 'WorkflowError in file .../common.smk' with a
    frame line ('File ".../common.smk", line N, in <module>') around the problems. Nothing has
    been written yet (Snakemake locks and logs only after the DAG is built).
    """
    print(str(exc), file=sys.stderr)
    raise SystemExit(1)


try:
    # Each problem names the file (or --config) that set the offending value.
    _sources = load_sources(["config/config.yaml", *workflow.overwrite_configfiles], workflow.config_settings.config)
    validate_config(config, "config (config/config.yaml + --config/--configfile)", _sources)
    check_environment(config)
except InputError as exc:
    _refuse(exc)


onstart:
    # Snakemake waits for running jobs on SIGTERM: pass it on to them (disagglab/guard.py).
    forward_sigterm()
    # Before the first job (never in a dry run): the bucket must resolve, so a run without
    # one stops here instead of after rendering and deploying.
    try:
        check_discovery(config)
    except InputError as exc:
        raise WorkflowError(str(exc))

# Jobs run in their own processes; they read the very configuration this DAG was built with.
os.environ[ENV_VAR] = json.dumps(config, sort_keys=True)
PYTHON = sys.executable
BASEDIR = workflow.basedir
# `exec`: the job's shell becomes the Python process, so a SIGTERM to the group reaches the code
# that stops the servers, and Snakemake waits for it (bash would die at once, orphaning it).
RUN = f"exec env PYTHONPATH={shlex.quote(BASEDIR)} {shlex.quote(PYTHON)} -m disagglab"
# show_warnings: a plan's warnings (disagglab/plan/checks.py) go to stderr once, in -n and in runs.
PHASES = Phases(PLANS_DIR, config, show_warnings=True)

# The plans of the phases the targets name, before any input function asks for them.
try:
    check_target_plans(PHASES.plan)
except InputError as exc:
    _refuse(exc)

# Test-only fault injection (disagglab/faults.py): a wrong DISAGGLAB_FAULTS stops the run before any job.
try:
    check_fault_environment(os.environ, PHASES.pattern_or_none, config["engine"])
except FaultError as exc:
    _refuse(exc)

# One run per phase, and none on the leftovers of a killed run (see disagglab/guard.py).
try:
    check_phases()
except RunRefused as exc:
    raise WorkflowError(str(exc))

quarantine_corrupt_results()
sweep_stale_layer_markers()
sweep_deleted_results()


# Wildcard paths of results/<phase>/... (disagglab/paths.py TREE): rules name files by kind.
P = RULE_PATHS


wildcard_constraints:
    phase=r"phase[0-9]+",
    phase_a=r"phase[0-9]+",
    phase_b=r"phase[0-9]+",
    layer=r"[A-Za-z0-9_-]+",
    pattern=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    role=r"unified|producer|consumer",
    trial=r"[1-9][0-9]*",


def _plan_call(fn, *args):
    """Turn a plan problem into one clear error instead of a traceback."""
    try:
        return fn(*args)
    except InputError as exc:
        raise WorkflowError(str(exc))
    except KeyError as exc:
        raise WorkflowError(exc.args[0] if exc.args else str(exc))


def get_task_digest(wildcards):
    return _plan_call(PHASES.task_digest, wildcards.phase, wildcards.pattern, wildcards.role)


def get_task_files(wildcards):
    roles = _plan_call(PHASES.pattern, wildcards.phase, wildcards.pattern).roles
    layout = PhaseLayout.of(wildcards.phase)
    return [str(layout.task(wildcards.pattern, role)) for role in roles]


def get_task_digests(wildcards):
    return _plan_call(PHASES.task_digests, wildcards.phase, wildcards.pattern)


def get_node_file_fingerprint(wildcards):
    return _plan_call(PHASES.node_file_fingerprint, wildcards.phase, wildcards.pattern)


def get_trial_results(wildcards):
    return _plan_call(PHASES.trial_results, wildcards.phase, wildcards.pattern)


def trial_priority(wildcards):
    return max(1, 1000 - int(wildcards.trial))


def get_layer_results(wildcards):
    return _plan_call(PHASES.layer_results, wildcards.phase, wildcards.layer)


def get_compared_results(wildcards):
    """sha256 of every result of both phases: the comparison is redone when any changes."""
    from disagglab.hashing import sha256_file

    files = [f for phase in (wildcards.phase_a, wildcards.phase_b) for f in sorted(PhaseLayout.of(phase).runs_dir.glob("*.json"))]
    return [f"{f}={sha256_file(f)}" for f in files]


def get_phase_result_digests(wildcards):
    """sha256 of the phase's results and failure records: reports and tracking follow them."""
    from disagglab.hashing import sha256_file

    layout = PhaseLayout.of(wildcards.phase)
    files = sorted(layout.runs_dir.glob("*.json")) + sorted(layout.failures_dir.glob("*.json"))
    return [f"{f.parent.name}/{f.name}={sha256_file(f)}" for f in files]


def get_phase_layers(wildcards):
    plan = _plan_call(PHASES.plan, wildcards.phase)
    return [str(PhaseLayout.of(wildcards.phase).layer_marker(layer.id)) for layer in plan.layers]


def get_pattern_node_files(wildcards):
    """The node-side source files this pattern runs (content tracked by params, not mtime).

    Relative to the workflow, as every other input: an absolute path would change the input set
    of every deploy (and re-measure every trial) when a finished phase moves to another folder.
    """
    rels = [line.split("=", 1)[0] for line in get_node_file_fingerprint(wildcards)]
    return [ancient(os.path.relpath(os.path.join(BASEDIR, rel))) for rel in rels]
