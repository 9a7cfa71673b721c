"""Check `vllm serve` argument lists with vLLM's own parser, without a GPU.

    <argcheck venv>/bin/python tools/vllm_argcheck.py < cases.jsonl > verdicts.jsonl
    <argcheck venv>/bin/python tools/vllm_argcheck.py --version

Input: one JSON object per line, {"id": "...", "args": ["<model>", "--flag", "value", ...]}
(the words after `serve`). Output: one JSON object per input line, {"id", "ok", "stage",
"error", "warnings"}, then nothing else on stdout (vLLM's logging goes to stderr).

Run by `python -m disagglab check-flags` (make check-vllm-flags) under a venv that holds the
plan's vLLM version, installed CPU-only (tools/setup_vllm_argcheck.sh). The parser is built
the way `vllm serve` builds it: a top-level parser with a `serve` sub-parser passed to
`make_arg_parser` (its module moved: vllm.entrypoints.openai.cli_args in 0.15.x,
vllm.entrypoints.launchers.cli_args in 0.32, vllm.entrypoints.common.cli_args in 0.33).

Stages, each a real vLLM check:
  parse        argparse, which includes pydantic validation of JSON flags such as
               --kv-transfer-config (an invalid kv_role fails here)
  validate     validate_parsed_serve_args, what `vllm serve` runs right after parsing
  engine_args  AsyncEngineArgs.from_cli_args (does not load the model)
Not checked: anything that needs the model or the GPUs (max_model_len above the model's
limit, heads not divisible by the TP size, memory), and connector names or the contents of
kv_connector_extra_config, which vLLM itself only checks when the server starts.

Without a GPU a CUDA wheel resolves no platform and building the parser fails in
DeviceConfig ("Failed to infer device type"), so the CPU platform is selected before the rest
of vLLM is imported. That changes a few platform-derived defaults, never which flags or
values are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
from typing import Any

CLI_ARGS_MODULES = (
    "vllm.entrypoints.openai.cli_args",  # 0.15.x
    "vllm.entrypoints.launchers.cli_args",  # 0.32
    "vllm.entrypoints.common.cli_args",  # 0.33
)


def select_cpu_platform() -> None:
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()


def load_parser_api() -> tuple[Any, Any, str]:
    errors = []
    for name in CLI_ARGS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(module, "make_arg_parser"):
            return module.make_arg_parser, getattr(module, "validate_parsed_serve_args", None), name
    raise ImportError("vLLM's serve parser not found: " + "; ".join(errors))


class WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build_parser(make_arg_parser: Any) -> argparse.ArgumentParser:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    top = FlexibleArgumentParser(prog="vllm")
    sub = top.add_subparsers(dest="subparser")
    serve = sub.add_parser("serve", usage="vllm serve [model_tag] [options]")
    make_arg_parser(serve)
    return top


def argparse_message(stderr: str) -> str:
    """argparse's `prog: error: ...` text (pydantic errors span lines), as one line."""
    _, sep, rest = stderr.partition(": error: ")
    if not sep:
        return stderr.strip().splitlines()[-1] if stderr.strip() else "rejected by the argument parser"
    lines = [line.strip() for line in rest.splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return " / ".join(lines)


def check(args: list[str], api: tuple[Any, Any, str], warnings: WarningCollector) -> dict[str, Any]:
    make_arg_parser, validate, _ = api
    warnings.messages.clear()
    with contextlib.suppress(Exception):
        from vllm.logger import _print_warning_once  # noqa: PLC0415 - each case reports its own warnings

        _print_warning_once.cache_clear()
    parser = build_parser(make_arg_parser)
    stage = "parse"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parser.parse_args(["serve", *args])
        stage = "validate"
        if validate is not None:
            validate(parsed)
        stage = "engine_args"
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: PLC0415

        AsyncEngineArgs.from_cli_args(parsed)
    except SystemExit:
        return {"ok": False, "stage": stage, "error": argparse_message(stderr.getvalue()), "warnings": list(warnings.messages)}
    except Exception as exc:  # noqa: BLE001 - vLLM raises ValueError, TypeError, pydantic errors...
        return {"ok": False, "stage": stage, "error": f"{type(exc).__name__}: {exc}", "warnings": list(warnings.messages)}
    return {"ok": True, "stage": "done", "error": None, "warnings": list(warnings.messages)}


def main(argv: list[str] | None = None) -> int:
    opts = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    opts.add_argument("--version", action="store_true", help="print the vLLM version and parser module as JSON")
    ns = opts.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # vLLM logs to stdout; keep stdout for the verdicts
    try:
        select_cpu_platform()
        import vllm

        api = load_parser_api()
    except Exception as exc:  # noqa: BLE001 - a broken venv is reported, exit 4
        print(json.dumps({"ok": False, "stage": "import", "error": f"{type(exc).__name__}: {exc}"}), file=real_stdout)
        return 4
    if ns.version:
        print(json.dumps({"vllm_version": vllm.__version__, "parser_module": api[2]}), file=real_stdout, flush=True)
        return 0
    warnings = WarningCollector()
    logging.getLogger("vllm").addHandler(warnings)
    bad = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        verdict = {"id": case.get("id"), **check([str(a) for a in case["args"]], api, warnings)}
        bad += not verdict["ok"]
        print(json.dumps(verdict, sort_keys=True), file=real_stdout, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
