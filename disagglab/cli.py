"""`python -m disagglab <command>`: the one call each Snakemake rule makes into the package."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from disagglab.errors import InputError
from disagglab.hashing import atomic_write_bytes, atomic_write_json
from disagglab.paths import PLANS_DIR, PhaseLayout
from disagglab.plan.config import current_config


def _phases():
    from disagglab.tasks.dag import Phases

    return Phases(PLANS_DIR, current_config())


def cmd_validate(args: argparse.Namespace) -> int:
    """Each plan on its own, then against the configuration (model context, memory); warnings
    follow the "ok" line on stderr, as `-n`, `status` and plan.md show them."""
    from disagglab.plan.checks import check_plan, print_warnings
    from disagglab.plan.model import load_plan

    cfg = current_config()
    bad = 0
    for path in args.plans:
        try:
            plan = load_plan(path)
            warnings = check_plan(plan, cfg)
        except InputError as exc:
            bad += 1
            print(exc, file=sys.stderr)
            continue
        print(f"{path}: ok ({len(plan.layers)} layers, {len(plan.patterns)} patterns" + (f", {len(warnings)} warnings)" if warnings else ")"))
        print_warnings(warnings)
    return 2 if bad else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """The configuration Snakemake would use (config/config.yaml + --configfile files), its
    environment (SCRIPTS_BUCKET, NODE*, region) and, with storage s3, where the bucket comes from."""
    from disagglab.paths import CONFIG_DIR
    from disagglab.plan.config import load_sources, merge, validate_config
    from disagglab.plan.config_checks import check_discovery, check_environment

    sources = load_sources([CONFIG_DIR / "config.yaml", *args.configfile])
    cfg = validate_config(merge(sources), "config", sources)
    check_environment(cfg)
    bucket = check_discovery(cfg)
    print(f"config ok: executor {cfg['executor']}, engine {cfg['engine']}, storage {cfg['storage']}" + (f", bucket {bucket}" if bucket else ""))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    text = _phases().task_text(args.phase, args.pattern, args.role)
    atomic_write_bytes(Path(args.output), text.encode())
    return 0


def _edited_tasks(phases, args: argparse.Namespace) -> list[str]:
    """Task files whose bytes are not what the plan renders (edited by hand): never deployed."""
    from disagglab.hashing import sha256_file

    edited = []
    for task in map(Path, args.tasks):
        expected, actual = phases.task_digest(args.phase, args.pattern, task.stem), sha256_file(task)
        if actual != expected:
            edited.append(f"{task}: sha256 {actual}, but the plan renders sha256 {expected}: the file was edited after "
                          "rendering; refusing to deploy it (delete it to render it again)")
    if edited:
        print("\n".join(edited), file=sys.stderr)
    return edited


def cmd_deploy(args: argparse.Namespace) -> int:
    from disagglab.deploy.step import DeployFailed, deploy_failure_record, deploy_pattern
    from disagglab.deploy.storage import open_storage
    from disagglab.results.failure import write_failure
    from disagglab.tasks.nodefiles import files_for_pattern, node_file_digests

    phases = _phases()
    pattern = phases.pattern(args.phase, args.pattern)
    if _edited_tasks(phases, args):
        return 1
    node_files = sorted(files_for_pattern(pattern, phases.cfg["engine"], node_file_digests()))
    failure = PhaseLayout(Path(args.output).parents[1]).failure(args.pattern)
    started = time.time()
    try:
        deploy_pattern(args.phase, args.pattern, node_files, [Path(t) for t in args.tasks], open_storage(phases.cfg), Path(args.output))
    except DeployFailed as exc:  # the store failed mid-deploy: no marker, a failure record, one clear line
        record = deploy_failure_record(args.phase, pattern.layer, args.pattern, phases.cfg["engine"], exc, started)
        write_failure(failure, record)
        print(record["message"], file=sys.stderr)
        return 1
    if failure.exists() and json.loads(failure.read_text()).get("step") == "deploy":
        failure.unlink()  # the deploy that failed last time went through
    return 0


def cmd_run_trial(args: argparse.Namespace) -> int:
    from disagglab.results.records import save_trial
    from disagglab.run.fleet import open_fleet
    from disagglab.run.ledger import stop_when_orphaned
    from disagglab.run.trial import TrialRun

    phases = _phases()
    cfg = phases.cfg
    plan = phases.plan(args.phase)
    output = Path(args.output)
    try:
        fleet = open_fleet(cfg)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. botocore NoRegionError / NoCredentialsError
        print(f"{args.pattern}: cannot set up executor {cfg['executor']!r} with storage {cfg['storage']!r}: {type(exc).__name__}: {exc}\n"
              "(AWS: check credentials, AWS_REGION/aws.region, SCRIPTS_BUCKET and the NODE* variables; see README 'Running on AWS')",
              file=sys.stderr)
        return 1
    layout = PhaseLayout(output.parents[2])
    trial = TrialRun(plan, plan.pattern(args.pattern), args.phase, cfg, fleet, layout, trial=args.trial)
    stop_when_orphaned()
    try:
        written = save_trial(trial.run(), layout, trial.log)
    except KeyboardInterrupt:  # stopped cleanly, failure record written: leave Snakemake no incomplete marker
        from disagglab.guard.snakestate import withdraw_incomplete_marker

        withdraw_incomplete_marker(output)
        raise
    if written.resolve() != output.resolve():
        print(f"result written to {written}, expected {output}", file=sys.stderr)
        return 1
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    from disagglab.paths import AGGREGATED, PhaseLayout
    from disagglab.results.fold import aggregate_files

    trials = [Path(t) for t in args.trials]
    output = Path(args.output)
    markers = {t.parent / AGGREGATED for t in trials}
    for marker in markers:  # first: a result that failed to fold must never look deleted
        marker.unlink(missing_ok=True)
    atomic_write_json(output, aggregate_files(trials))
    PhaseLayout(output.parents[1]).corrupt_result(output.stem).unlink(missing_ok=True)  # a corrupt copy, now rebuilt
    for marker in markers:
        atomic_write_json(marker, {"result": args.output, "trials": [str(t) for t in trials if t.parent == marker.parent]})
    return 0


def cmd_layer_done(args: argparse.Namespace) -> int:
    from disagglab.results.records import layer_marker

    phases = _phases()
    paths = {pid: Path(p) for pid, p in zip(phases.plan(args.phase).layer(args.layer).pattern_ids, phases.layer_results(args.phase, args.layer), strict=True)}
    atomic_write_json(Path(args.output), layer_marker(args.phase, args.layer, paths))
    return 0


def cmd_phase_done(args: argparse.Namespace) -> int:
    layers = {Path(m).stem: json.loads(Path(m).read_text()) for m in args.markers}
    atomic_write_json(Path(args.output), {"phase": args.phase, "layers": layers})
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from disagglab.report.phases import compare, text_lines, write_html

    threshold = args.threshold if args.threshold is not None else current_config()["compare"]["threshold_pct"]
    result = compare(Path("results") / args.phase_a, Path("results") / args.phase_b, threshold)
    print("\n".join(text_lines(result)))
    if args.html:
        write_html(result, Path(args.html))
    return 1 if result.regressions and not args.no_fail else 0


def cmd_summary(args: argparse.Namespace) -> int:
    from disagglab.report.document import write_summary

    write_summary(_phases().plan(args.phase), Path("results") / args.phase, Path(args.output))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from disagglab.report.document import write_report

    plots = write_report(_phases().plan(args.phase), Path("results") / args.phase, Path(args.html), Path(args.md), Path(args.plots))
    print(f"report {args.html}: {len(plots)} plots", file=sys.stderr)
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from disagglab.report import tracking
    from disagglab.results.records import git_revision

    plan = _phases().plan(args.phase)
    summary = tracking.log_phase(plan, Path("results") / args.phase, tracking.tracking_uri(Path("results")), git_revision())
    print(f"MLflow {tracking.experiment_name(args.phase)}: {len(summary['created'])} created, "
          f"{len(summary['unchanged'])} unchanged, {len(summary['superseded'])} superseded, {len(summary['corrupt'])} corrupt (skipped)", file=sys.stderr)
    atomic_write_json(Path(args.output), summary)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from disagglab.results.status import list_lines

    phases = _phases()
    if args.phase:
        print("\n".join(list_lines(phases.plan(args.phase))))
        return 0
    bad = 0
    for path in sorted(PLANS_DIR.glob("phase*.json"), key=lambda p: int(p.stem[5:]) if p.stem[5:].isdigit() else 0):
        try:
            plan = phases.plan(path.stem)
        except InputError as exc:
            bad += 1
            print(f"{path.stem}: INVALID ({len(exc.problems)} problems; run: python -m disagglab validate {path})")
            continue
        print(f"{plan.phase_name}: {plan.name}: " + ", ".join(f"{lay.id} ({len(lay.pattern_ids)})" for lay in plan.layers))
    return 2 if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    from disagglab.plan.checks import warning_lines
    from disagglab.plan.config import merged_config
    from disagglab.results.status import leftover_note, phase_status, status_json, status_lines

    phases = _phases()
    plan = phases.plan(args.phase)
    warnings = warning_lines(phases.warnings[args.phase])
    if args.configfile:  # checked here: Snakemake is asked only about patterns with a result
        merged_config(args.configfile)
    try:
        statuses = phase_status(plan, Path("."), args.configfile)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    note = leftover_note(plan)
    if note and not args.json:
        print(note)
    elif note:
        print(note, file=sys.stderr)
    print(status_json(plan, statuses, warnings) if args.json else "\n".join([*status_lines(plan, statuses), *warnings]))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from disagglab.estimate.table import estimate, markdown
    from disagglab.plan.config import merged_config

    cfg = merged_config(args.configfile) if args.configfile else current_config()
    plan = _phases().plan(args.phase)
    est = estimate(plan, cfg)
    text = markdown(est)
    if args.output:
        atomic_write_bytes(Path(args.output), text.encode())
    if args.json:
        print(json.dumps(est.to_json(), indent=2, sort_keys=True))
    else:
        print(text, end="")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from disagglab.guard.recover import RecoverRefused, recover

    if not re.fullmatch(r"phase[0-9]+", args.phase):
        print(f"recover: {args.phase!r} is not a phase name (e.g. phase14)", file=sys.stderr)
        return 2
    try:
        ok, lines = recover(args.phase)
    except RecoverRefused as exc:
        print(exc, file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_accept(args: argparse.Namespace) -> int:
    from disagglab.results.accept import AcceptFailed, AcceptRefused, accept, phases_for

    if not re.fullmatch(r"phase[0-9]+", args.phase):
        print(f"accept: {args.phase!r} is not a phase name (e.g. phase14)", file=sys.stderr)
        return 2
    try:
        lines = accept(phases_for(args.configfile), args.phase, args.pattern, Path("."), args.configfile)
    except AcceptRefused as exc:
        print(exc, file=sys.stderr)
        return 2
    except AcceptFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _req(*names: str) -> list[tuple[tuple[str, ...], dict]]:
    return [((n,), {"required": True}) for n in names]


PHASE_ARG = (("phase",), {"help": "e.g. phase14"})
CONFIGFILES = (("--configfile",), {"nargs": "+", "help": "the config file(s) you run Snakemake with (e.g. config/aws.yaml)"})
JSON = (("--json",), {"action": "store_true", "help": "machine-readable output"})
# name, old spellings kept as aliases for one release, handler, help, arguments.
COMMANDS: list[tuple[str, tuple[str, ...], Callable[[argparse.Namespace], int], str, list[tuple[tuple[str, ...], dict]]]] = [
    ("validate", (), cmd_validate, "validate plan files; every problem is listed", [(("plans",), {"nargs": "+"})]),
    ("check-config", (), cmd_check_config, "validate the configuration (and its environment) a run would use",
     [(("configfile",), {"nargs": "*", "help": "files given to Snakemake with --configfile, in order (e.g. config/aws.yaml)"})]),
    ("render", (), cmd_render, "render one role's task definition", _req("--phase", "--pattern", "--role", "--output")),
    ("deploy", (), cmd_deploy, "copy a pattern's node-side files and task definitions into the store",
     [*_req("--phase", "--pattern", "--output"), (("tasks",), {"nargs": "+"})]),
    ("run-trial", ("run-pattern",), cmd_run_trial, "run one trial of a pattern on its nodes and write the trial's result",
     [*_req("--phase", "--pattern", "--output"),
      (("--trial",), {"type": int, "default": 1, "help": "which trial (1-based); the output is results/<phase>/trials/<pattern>/<trial>.json"})]),
    ("fold", ("aggregate",), cmd_fold, "fold a pattern's trial results into its result (means, std, 95%% t-intervals)",
     [*_req("--output"), (("trials",), {"nargs": "+"})]),
    ("layer-done", (), cmd_layer_done, "write a layer's completion marker", _req("--phase", "--layer", "--output")),
    ("phase-done", (), cmd_phase_done, "write the marker for a whole phase", [*_req("--phase", "--output"), (("markers",), {"nargs": "+"})]),
    ("summary", (), cmd_summary, "results/<phase>/summary.csv: one row per pattern", _req("--phase", "--output")),
    ("report", (), cmd_report, "the phase report (HTML + Markdown + plots)", _req("--phase", "--html", "--md", "--plots")),
    ("track", (), cmd_track, "log a phase's results to MLflow (idempotent)", _req("--phase", "--output")),
    ("compare", (), cmd_compare, "match patterns of two phases and flag regressions (exit 1 if any)", [
        (("phase_a",), {"help": "the baseline phase, e.g. phase14"}),
        (("phase_b",), {"help": "the phase compared with it, e.g. phase15"}),
        (("--threshold",), {"type": float, "help": "percent change that counts as a regression (default: compare.threshold_pct)"}),
        (("--html",), {"help": "also write an HTML comparison here"}),
        (("--no-fail",), {"action": "store_true", "help": "exit 0 even when a regression is flagged"})]),
    ("list", (), cmd_list, "the plans, or the layers and patterns of one phase",
     [(("phase",), {"nargs": "?", "help": "e.g. phase14; omit to list every plan"})]),
    ("status", (), cmd_status, "each pattern: done, out-of-date, running, failed (step, node, cause) or pending", [PHASE_ARG, JSON, CONFIGFILES]),
    ("estimate", (), cmd_estimate, "patterns still to run, their estimated wall time and cost (also results/<phase>/plan.md)", [
        (("phase",), {"help": "e.g. phase15"}),
        (("--output",), {"help": "also write the table here (atomically), e.g. results/phase15/plan.md"}), JSON,
        (("--configfile",), {"nargs": "+", "help": "config file(s) merged over config/config.yaml, as you run Snakemake with"})]),
    ("accept", (), cmd_accept, "after a refactor: make finished results current under today's task and node-file sha256s "
     "without measuring (deploys again, records the acceptance in provenance)",
     [PHASE_ARG, (("--pattern",), {"nargs": "+", "help": "only these finished patterns (default: every finished pattern)"}), CONFIGFILES]),
    ("recover", (), cmd_recover, "after a killed run: stop its orphaned servers, remove the stale lock and incomplete outputs", [PHASE_ARG]),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disagglab", description="Control side of the disaggregated-inference experiment pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, aliases, func, help_text, arguments in COMMANDS:
        p = sub.add_parser(name, aliases=list(aliases), help=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: temporary files are removed, run-trial stops its servers.
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `status | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
