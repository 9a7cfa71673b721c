"""`make check-vllm-flags`: every server command line of a plan, checked by vLLM's own parser
and then by vLLM's own config classes (as far as they can be built without a GPU or config.json).

The unmarked tests need no vLLM. The others run the real parser and config classes of vLLM
0.15.1 (the plans' vllm_version) from `.venv-argcheck-0.15.1` (built by `make check-vllm-flags`);
they carry the `vllm_cpu` marker with the other real-vLLM tests (`make test-vllm`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from disagglab.paths import PLANS_DIR
from disagglab.plan.config import load_config_file
from disagglab.plan.model import load_plan
from disagglab.tasks.flagcheck import CHECKER, node_config, rejection, report, serve_cases

from conftest import ROOT, Project

ARGCHECK_PYTHON = ROOT / ".venv-argcheck-0.15.1" / "bin" / "python"


def test_cases_are_the_rendered_serve_words_with_every_token_bound() -> None:
    plan = load_plan(PLANS_DIR / "phase14.json")
    cases = serve_cases(plan, "phase14", node_config(load_config_file(), local=False))
    assert len(cases) == 2 * sum(len(p.roles) for p in plan.patterns.values())
    by_id = {c["id"]: c["args"] for c in cases}
    producer = by_id["p14-tcp-1k-c1 producer"]
    assert producer[0] == "Qwen/Qwen2.5-7B-Instruct" and producer[producer.index("--port") + 1] == "8100"
    assert "--max-num-seqs" not in producer  # as rendered: the templates never give it
    # The same line asked to hold the pattern's requests in flight (c1: 1; c8: 8).
    assert by_id["p14-tcp-1k-c1 producer holding 1"] == [*producer, "--max-num-seqs", "1"]
    assert by_id["p14-efa-4k-c8 consumer holding 8"][-2:] == ["--max-num-seqs", "8"]
    assert not any("${" in word for c in cases for word in c["args"])


def flagcheck(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    assert ARGCHECK_PYTHON.exists(), f"{ARGCHECK_PYTHON} is missing: run `make check-vllm-flags` once"
    if not (project.root / "tools").exists():
        shutil.copytree(ROOT / "tools", project.root / "tools")
    env = {k: v for k, v in os.environ.items() if k != "DISAGGLAB_CONFIG"}
    return subprocess.run([sys.executable, "-m", "disagglab.tasks.flagcheck", "--python", str(ARGCHECK_PYTHON), *args],
                          cwd=project.root, capture_output=True, text=True, timeout=600, check=False, env=env)


@pytest.mark.vllm_cpu
def test_the_plans_pass_and_planted_bad_flags_are_rejected_with_the_pattern_id(project: Project) -> None:
    out = flagcheck(project, "plans/phase14.json", "plans/phase15.json", "plans/phase16.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plans/phase14.json: 100 of 100 server command lines accepted by vLLM 0.15.1" in out.stdout
    assert "plans/phase15.json: 58 of 58 server command lines accepted by vLLM 0.15.1 (node rendering" in out.stdout
    assert "plans/phase16.json: 60 of 60 server command lines accepted by vLLM 0.15.1 (node rendering" in out.stdout
    assert " skipped: " not in out.stdout  # every config class was built for every command line
    assert "not checked (no GPU, no config.json): ModelConfig is not built" in out.stdout
    # Plant an unknown flag (consumer) and an invalid kv-transfer-config (producer).
    consumer = project.root / "templates" / "disaggregated-consumer.json.jinja2"
    planted = consumer.read_text().replace('inst.port_token, ["--kv-transfer-config"', 'inst.port_token, ["--bogus-flag", "1", "--kv-transfer-config"')
    assert "--bogus-flag" in planted  # the serve flags are a macro (templates/serve.jinja2); the role adds its own
    consumer.write_text(planted)
    producer = project.root / "templates" / "disaggregated-producer.json.jinja2"
    producer.write_text(producer.read_text().replace('"kv_role": "kv_producer"', '"kv_role": "kv_wrong"'))
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "plans/phase14.json: p14-tcp-1k-c1 consumer: [parse] unrecognized arguments: --bogus-flag 1" in lines
    assert "plans/phase14.json: p14-tcp-1k-c1 consumer holding 1: [parse] unrecognized arguments: --bogus-flag 1" in lines
    kv = [line for line in lines if line.startswith("plans/phase14.json: p14-efa-4k-c8 producer: [parse] argument --kv-transfer-config")]
    assert kv and "kv_role" in kv[0] and "kv_wrong" in kv[0]
    assert not any("unified" in line for line in lines if ": [" in line)
    assert "plans/phase14.json: 20 of 100 server command lines accepted by vLLM 0.15.1 (node rendering, each as rendered and holding its requests in flight)" in lines


def checker_module():
    """tools/vllm_argcheck.py imports only the stdlib at module level: its pure helpers run without vLLM."""
    spec = importlib.util.spec_from_file_location("vllm_argcheck", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_config_rejection_names_the_flags_vllm_s_message_mentions_with_the_values_given() -> None:
    checker = checker_module()
    fields = ("max_num_batched_tokens", "max_num_seqs", "max_model_len")
    message = "ValidationError: ... max_num_batched_tokens (16) must be greater than or equal to max_num_seqs (256)."
    assert checker.flags_named(message, fields, ["m", "--max-num-batched-tokens", "16", "--max-model-len", "1010"]) == [
        "--max-num-batched-tokens 16", "--max-num-seqs (default)"]
    assert checker.flags_named(message, fields, ["m", "--max-num-batched-tokens=16", "--max-num-seqs", "256"]) == [
        "--max-num-batched-tokens=16", "--max-num-seqs 256"]
    pydantic = ("1 validation error for SchedulerConfig\n  Value error, max_num_seqs (9). [type=value_error, input_value=ArgsKwargs(()]\n"
                "    For further information visit https://errors.pydantic.dev/2.14/v/value_error")
    assert checker.exception_text(ValueError(pydantic)) == "ValueError: 1 validation error for SchedulerConfig / Value error, max_num_seqs (9)."


def test_the_report_prints_plan_pattern_role_stage_flags_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    verdict = {"id": "p14-tcp-1k-c1 producer", "ok": False, "stage": "SchedulerConfig", "flags": ["--max-num-batched-tokens 16"],
               "error": "ValidationError: boom", "skipped": []}
    assert rejection(Path("plans/phase14.json"), verdict) == (
        "plans/phase14.json: p14-tcp-1k-c1 producer: [SchedulerConfig] --max-num-batched-tokens 16: ValidationError: boom")
    ok = {"id": "p14-unified-1k-c1 unified", "ok": True, "stage": "done", "flags": [], "error": None, "skipped": ["X skipped: why"]}
    assert report(Path("plans/phase14.json"), [{}, {}], [verdict, ok], "0.15.1", local=False) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["plans/phase14.json: 1 of 2: X skipped: why",
                         "plans/phase14.json: 1 of 2 server command lines accepted by vLLM 0.15.1 (node rendering, each as rendered and holding its requests in flight)"]


def l0_only(project: Project, **overrides: object) -> None:
    """phase14 cut to its layer L0 (6 patterns, 10 servers), p14-tcp-1k-c1 with the given overrides."""
    doc = project.plan("phase14")
    doc["layers"] = doc["layers"][:1]
    for pattern in doc["layers"][0]["patterns"]:
        if pattern["id"] == "p14-tcp-1k-c1":
            pattern.update(overrides)
    project.write_plan("phase14", doc)


@pytest.mark.vllm_cpu
def test_max_num_batched_tokens_16_is_rejected_with_vllm_s_own_message(project: Project) -> None:
    # vLLM 0.15.1 lowers a defaulted max_num_seqs to max_num_batched_tokens (EngineArgs.
    # _set_default_max_num_seqs_and_batched_tokens_args): 16 alone starts and runs 16 at a time.
    # At c1 that is all the pattern needs, and vLLM accepts both questions.
    l0_only(project, max_num_batched_tokens=16)
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plans/phase14.json: 20 of 20 server command lines accepted by vLLM 0.15.1" in out.stdout
    # At c64 (30 in flight) SchedulerConfig, asked to hold them, refuses with its own message; the
    # plan's rule says the same in its words, and both count.
    l0_only(project, max_num_batched_tokens=16, concurrency=64)
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 1, out.stdout + out.stderr
    message = ("ValidationError: 1 validation error for SchedulerConfig / Value error, max_num_batched_tokens (16) must be"
               " greater than or equal to max_num_seqs (30).")
    lines = [line for line in out.stdout.splitlines() if ": [" in line]
    assert lines == [f"plans/phase14.json: p14-tcp-1k-c1 {role} holding 30: [SchedulerConfig] --max-num-batched-tokens 16 --max-num-seqs 30: {message}"
                     for role in ("producer", "consumer")]
    rule = "plans/phase14.json: layers[0].patterns[1].max_num_batched_tokens: max_num_batched_tokens 16 is below the 30 requests in flight"
    assert any(line.startswith(rule) and line.endswith("[plan rule]") for line in out.stdout.splitlines()), out.stdout
    # A command line that gives --max-num-seqs itself is asked once, as rendered.
    serve = project.root / "templates" / "serve.jinja2"
    serve.write_text(serve.read_text().replace('"--port", port,', '"--port", port, "--max-num-seqs", "256",'))
    l0_only(project, max_num_batched_tokens=16)
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if ": [" in line]
    assert lines == [f"plans/phase14.json: p14-tcp-1k-c1 {role}: [SchedulerConfig] --max-num-batched-tokens 16 --max-num-seqs 256: "
                     + message.replace("(30)", "(256)") for role in ("producer", "consumer")]


@pytest.mark.vllm_cpu
def test_a_kv_connector_vllm_does_not_know_is_rejected_by_its_connector_registry(project: Project) -> None:
    l0_only(project)
    producer = project.root / "templates" / "disaggregated-producer.json.jinja2"
    producer.write_text(producer.read_text().replace('"kv_connector": "NixlConnector"', '"kv_connector": "NixlConector"'))
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if ": [" in line]
    assert [line.split(": [")[0] for line in lines] == [f"plans/phase14.json: p14-{b}-{n}k-c1 producer{held}" for n in (1, 4) for b in ("tcp", "efa")
                                                         for held in ("", " holding 1")]
    assert lines[0].startswith("plans/phase14.json: p14-tcp-1k-c1 producer: [KVTransferConfig] --kv-transfer-config {")
    assert lines[0].endswith("}: ValueError: Unsupported connector type: NixlConector")


def test_a_plan_rule_is_printed_and_vllm_is_still_asked(tmp_path: Path) -> None:
    """The plan's own rules run first and their errors are printed as rejections, but they do
    not stop the check: vLLM is still asked, so here (no checker venv) the run ends on that."""
    import json

    doc = json.loads((PLANS_DIR / "phase14.json").read_text())
    doc["layers"][0]["patterns"][0].update(max_num_batched_tokens=16, concurrency=64)
    plan = tmp_path / "phase14.json"
    plan.write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, "-m", "disagglab.tasks.flagcheck", "--python", str(tmp_path / "no-venv" / "python"), str(plan)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert out.returncode == 2, out.stdout + out.stderr
    rule = [line for line in out.stdout.splitlines() if line.endswith("[plan rule]")]
    assert len(rule) == 1 and "layers[0].patterns[0].max_num_batched_tokens: max_num_batched_tokens 16 is below the 30 requests in flight" in rule[0]
    assert "no-venv/python does not exist" in out.stderr
