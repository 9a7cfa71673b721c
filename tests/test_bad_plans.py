"""A corpus of bad plans: each is rejected with file + JSON path + reason, before any job.

Every case runs through the CLI validator and through a real Snakemake invocation, which
must exit non-zero and leave nothing under results/.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, make_project

BASE = json.loads((ROOT / "plans" / "phase14.json").read_text())
BASE["phase"] = 99
for _layer in BASE["layers"]:
    for _pat in _layer.get("patterns", []):  # L1 is a sweep: its id_template writes p{phase}-
        _pat["id"] = _pat["id"].replace("p14-", "p99-")


def mutate(fn: Callable[[dict], None]) -> str:
    doc = copy.deepcopy(BASE)
    fn(doc)
    return json.dumps(doc, indent=2)


def p0(doc: dict) -> dict:
    return doc["layers"][0]["patterns"][0]


def L1(doc: dict) -> dict:  # noqa: N802 - the layer's id
    return doc["layers"][1]


def _set(path: list, value) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return fn


def _del(path: list) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return fn


def with_line(key_value: str, extra: str) -> tuple[str, int, int]:
    """The plan text with `extra` on a line of its own after the first line holding `key_value`:
    (text, line of key_value, line of extra), 1-based."""
    lines = json.dumps(BASE, indent=2).splitlines()
    at = next(i for i, ln in enumerate(lines) if key_value in ln)
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines[at] = lines[at].rstrip(",") + ","
    lines.insert(at + 1, indent + extra + ("," if lines[at + 1].strip() not in ("}", "},") else ""))
    return "\n".join(lines), at + 1, at + 2


def replaced(old: str, new: str) -> str:
    text = json.dumps(BASE, indent=2)
    assert old in text
    return text.replace(old, new, 1)


PAT = ["layers", 0, "patterns", 0]
_DUP_PATTERN_KEY = with_line('"concurrency": 1', '"concurrency": 4')
_DUP_TOP_KEY = with_line('"phase": 99', '"phase": 99')
# (case name, plan text, expected JSON path, expected reason fragment)
CASES: list[tuple[str, str, str, str]] = [
    ("empty file", "", "", "file is empty"),
    ("whitespace only", "   \n\t\n", "", "file is empty"),
    ("invalid json", '{"phase": 99,\n "name": "x" "description": ""}', "line 2 column", "invalid JSON"),
    ("truncated json", json.dumps(BASE)[:200], "line 1 column", "invalid JSON"),
    ("top level array", "[]", "(top level)", "expected object"),
    ("missing phase", mutate(_del(["phase"])), "phase", "required key is missing"),
    ("missing infrastructure", mutate(_del(["infrastructure"])), "infrastructure", "required key is missing"),
    ("missing model", mutate(_del(["infrastructure", "model"])), "infrastructure.model", "required key is missing"),
    ("missing backend", mutate(_del([*PAT, "backend"])), "layers[0].patterns[0].backend", "required key is missing"),
    ("missing prompt_tokens", mutate(_del([*PAT, "prompt_tokens"])), "layers[0].patterns[0].prompt_tokens", "required key is missing"),
    ("unknown key typo", mutate(_set([*PAT, "concurency"], 2)), "layers[0].patterns[0].concurency", "unknown key 'concurency'"),
    ("unknown top-level key", mutate(_set(["owner"], "me")), "owner", "unknown key 'owner'"),
    ("unknown common key", mutate(_set(["common_settings", "max_token"], 5)), "common_settings.max_token", "unknown key"),
    ("unknown infra key", mutate(_set(["infrastructure", "gpus"], 4)), "infrastructure.gpus", "unknown key"),
    ("phase as string", mutate(_set(["phase"], "99")), "phase", "expected integer, got string"),
    ("concurrency as bool", mutate(_set([*PAT, "concurrency"], True)), "layers[0].patterns[0].concurrency", "expected integer, got boolean"),
    ("prompt_tokens as float", mutate(_set([*PAT, "prompt_tokens"], 1000.5)), "layers[0].patterns[0].prompt_tokens", "expected integer"),
    ("concurrency zero", mutate(_set([*PAT, "concurrency"], 0)), "layers[0].patterns[0].concurrency", "less than the minimum of 1"),
    ("negative prompt", mutate(_set([*PAT, "prompt_tokens"], -4)), "layers[0].patterns[0].prompt_tokens", "less than the minimum"),
    ("gpu util zero", mutate(_set(["common_settings", "gpu_memory_utilization"], 0)), "common_settings.gpu_memory_utilization", "less than or equal to the minimum"),
    ("gpu util above one", mutate(_set([*PAT, "gpu_memory_utilization"], 1.2)), "layers[0].patterns[0].gpu_memory_utilization", "greater than the maximum of 1"),
    ("bad backend", mutate(_set([*PAT, "backend"], "rdma")), "layers[0].patterns[0].backend", "is not one of"),
    ("bad measurement type", mutate(_set(["common_settings", "measurement_type"], "batch")), "common_settings.measurement_type", "is not one of"),
    ("tp above gpus", mutate(_set(["infrastructure", "tp_size"], 8)), "infrastructure.tp_size", "exceeds gpu_count_per_node 4"),
    ("single node with tcp", mutate(_set(["infrastructure", "node_count"], 1)), "infrastructure.node_count", "need two nodes"),
    ("duplicate pattern id", mutate(lambda d: d["layers"][2]["patterns"][0].update(id=p0(d)["id"])), "layers[2].patterns[0].id", "duplicate pattern id"),
    ("duplicate layer id", mutate(lambda d: d["layers"][1].update(id="L0")), "layers[1].id", "duplicate layer id"),
    ("id without phase prefix", mutate(_set([*PAT, "id"], "p14-unified-1k-c1")), "layers[0].patterns[0].id", "must start with 'p99-'"),
    ("id differs only in case", mutate(lambda d: d["layers"][2]["patterns"][0].update(id=p0(d)["id"].replace("unified", "Unified"))),
     "layers[2].patterns[0].id", "differs from 'p99-unified-1k-c1' (layers[0].patterns[0]) only in case"),
    ("layer id differs only in case", mutate(lambda d: d["layers"][1].update(id="l0")), "layers[1].id",
     "layer id 'l0' differs from 'L0' (layers[0]) only in case"),
    ("id with non-ascii letter", mutate(_set([*PAT, "id"], "p99-L0-\u00e9fa")), "layers[0].patterns[0].id", "does not match"),
    ("id starting with a dash", mutate(_set([*PAT, "id"], "-p99-x")), "layers[0].patterns[0].id", "does not match"),
    ("id with slash", mutate(_set([*PAT, "id"], "p99-../etc")), "layers[0].patterns[0].id", "does not match"),
    ("id with shell metachar", mutate(_set([*PAT, "id"], "p99-x;rm -rf ~")), "layers[0].patterns[0].id", "does not match"),
    ("id with command substitution", mutate(_set([*PAT, "id"], "p99-$(id)")), "layers[0].patterns[0].id", "does not match"),
    ("layer id with space", mutate(_set(["layers", 0, "id"], "L 0")), "layers[0].id", "does not match"),
    ("layer id with backtick", mutate(_set(["layers", 0, "id"], "L0`id`")), "layers[0].id", "does not match"),
    ("model with semicolon", mutate(_set(["infrastructure", "model"], "Qwen/x; curl evil")), "infrastructure.model", "neither a model id"),
    ("model with dollar", mutate(_set(["infrastructure", "model"], "$HOME/model")), "infrastructure.model", "neither a model id"),
    ("model with dotdot", mutate(_set(["infrastructure", "model"], "/opt/../etc/passwd")), "infrastructure.model", "neither a model id"),
    ("venv relative", mutate(_set(["infrastructure", "venv_path"], "venv/vllm")), "infrastructure.venv_path", "not an absolute path"),
    ("venv with backtick", mutate(_set(["infrastructure", "venv_path"], "/opt/`reboot`")), "infrastructure.venv_path", "not an absolute path"),
    ("venv with space", mutate(_set(["infrastructure", "venv_path"], "/opt/my venv")), "infrastructure.venv_path", "not an absolute path"),
    ("max_model_len too small", mutate(_set([*PAT, "max_model_len"], 500)), "layers[0].patterns[0].max_model_len", "less than prompt_tokens + max_tokens"),
    ("file stem mismatch", mutate(_set(["phase"], 98)), "phase", "file name stem must be 'phase98'"),
    ("no layers", mutate(_set(["layers"], [])), "layers", "should be non-empty"),
    ("layer without patterns", mutate(_set(["layers", 0, "patterns"], [])), "layers[0].patterns", "should be non-empty"),
    ("bad priority", mutate(_set(["layers", 0, "priority"], "high")), "layers[0].priority", "does not match"),
    ("bad vllm version", mutate(_set(["infrastructure", "vllm_version"], "latest")), "infrastructure.vllm_version", "does not match"),
    ("slo unknown key", mutate(_set([*PAT, "slo"], {"ttft": 100})), "layers[0].patterns[0].slo.ttft", "unknown key 'ttft'"),
    ("slo negative", mutate(_set(["common_settings", "slo"], {"tpot_ms": -5})), "common_settings.slo.tpot_ms", "less than or equal to the minimum"),
    ("slo empty", mutate(_set([*PAT, "slo"], {})), "layers[0].patterns[0].slo", "should be non-empty"),
    ("request rate zero", mutate(_set([*PAT, "request_rate"], 0)), "layers[0].patterns[0].request_rate", "less than or equal to the minimum"),
    ("request rate with offline", mutate(lambda d: p0(d).update(request_rate=2.0, measurement_type="offline")), "layers[0].patterns[0].request_rate", "needs measurement_type 'online'"),
    ("burstiness without rate", mutate(_set([*PAT, "burstiness"], 0.5)), "layers[0].patterns[0].burstiness", "only with a request_rate"),
    ("duplicate key in a pattern", _DUP_PATTERN_KEY[0], "layers[0].patterns[0].concurrency",
     f"duplicate key 'concurrency' (lines {_DUP_PATTERN_KEY[1]} and {_DUP_PATTERN_KEY[2]})"),
    ("duplicate top-level key", _DUP_TOP_KEY[0], "phase", f"duplicate key 'phase' (lines {_DUP_TOP_KEY[1]} and {_DUP_TOP_KEY[2]})"),
    ("NaN", replaced('"gpu_memory_utilization": 0.9', '"gpu_memory_utilization": NaN'), "common_settings.gpu_memory_utilization",
     "NaN is not a JSON number"),
    ("Infinity", replaced('"concurrency": 1', '"concurrency": Infinity'), "layers[0].patterns[0].concurrency", "Infinity is not a JSON number"),
    ("-Infinity", replaced('"max_tokens": 10', '"max_tokens": -Infinity'), "common_settings.max_tokens", "-Infinity is not a JSON number"),
    ("prefix_cache as string", mutate(_set([*PAT, "prefix_cache"], "yes")), "layers[0].patterns[0].prefix_cache", "expected boolean"),
    # Bounds with reasons (issue 11): fixed ones in the schema, the rest in disagglab/plan/bounds.py and fit.py.
    ("concurrency 10^12", mutate(_set([*PAT, "concurrency"], 10**12)), "layers[0].patterns[0].concurrency", "greater than the maximum of 960 (At most 960 requests in flight"),
    ("prompt_tokens 10^9", mutate(_set([*PAT, "prompt_tokens"], 10**9)), "layers[0].patterns[0].prompt_tokens", "greater than the maximum of 1048576"),
    ("measurement_iterations 10^9", mutate(_set(["common_settings", "measurement_iterations"], 10**9)), "common_settings.measurement_iterations", "greater than the maximum of 10000"),
    ("warmup_iterations 10^9", mutate(_set(["common_settings", "warmup_iterations"], 10**9)), "common_settings.warmup_iterations", "greater than the maximum of 10000"),
    ("max_tokens 10^9", mutate(_set(["common_settings", "max_tokens"], 10**9)), "common_settings.max_tokens", "greater than the maximum of 1048576"),
    ("tp_size 64", mutate(_set(["infrastructure", "tp_size"], 64)), "infrastructure.tp_size", "greater than the maximum of 16"),
    ("node_count 3", mutate(_set(["infrastructure", "node_count"], 3)), "infrastructure.node_count", "greater than the maximum of 2"),
    ("slo of a day", mutate(_set([*PAT, "slo"], {"e2el_ms": 86_400_000})), "layers[0].patterns[0].slo.e2el_ms", "greater than the maximum of 3600000"),
    ("tcp concurrency above the proxy's descriptors", mutate(_set(["layers", 0, "patterns", 1, "concurrency"], 321)), "layers[0].patterns[1].concurrency", "321 is above 320: the proxy holds"),
    ("offline tcp sends too many at once", mutate(lambda d: (d["common_settings"].update(measurement_iterations=400), d["layers"][0]["patterns"][1].update(measurement_type="offline"))),
     "layers[0].patterns[1].measurement_type", "offline sends all 400 measured requests at once"),
    ("prompt beyond the model's context", mutate(_set([*PAT, "prompt_tokens"], 32760)), "layers[0].patterns[0].prompt_tokens", "prompt_tokens + max_tokens = 32770 exceeds the context of Qwen/Qwen2.5-7B-Instruct (32768 tokens"),
    ("max_model_len beyond the model's context", mutate(_set([*PAT, "max_model_len"], 65536)), "layers[0].patterns[0].max_model_len", "max_model_len 65536 exceeds the context of Qwen/Qwen2.5-7B-Instruct"),
    ("more GPUs than the instance has", mutate(_set(["infrastructure", "gpu_count_per_node"], 8)), "infrastructure.gpu_count_per_node", "exceeds the 4 GPUs of g5.12xlarge"),
    ("weights do not fit", mutate(_set(["common_settings", "gpu_memory_utilization"], 0.55)), "layers[0].patterns[0]", "the weights alone do not fit"),
    ("max_num_batched_tokens 16 caps running sequences", mutate(lambda d: p0(d).update(max_num_batched_tokens=16, concurrency=64)),
     "layers[0].patterns[0].max_num_batched_tokens", "max_num_batched_tokens 16 is below the"),
    ("not even one request fits", mutate(_set(["common_settings", "gpu_memory_utilization"], 0.6)), "layers[0].patterns[3]", "less than one request of max_model_len 4096 (vLLM will not start)"),
    # Sweeps (issue 12): L1 is {"base": {"prompt_tokens": 4000}, "sweep": {"concurrency": [2, 4, 8, 16], "backend": [...]}}.
    ("sweep value below the minimum", mutate(lambda d: L1(d)["sweep"]["concurrency"].append(0)), "layers[1].sweep.concurrency[4]", "0 is less than the minimum of 1"),
    ("sweep value above the proxy's descriptors", mutate(lambda d: L1(d)["sweep"]["concurrency"].append(321)),
     "layers[1].sweep.concurrency[4] (pattern p99-tcp-4k-c321)", "321 is above 320: the proxy holds"),
    ("sweep repeats a value", mutate(lambda d: L1(d)["sweep"]["concurrency"].append(4)), "layers[1].sweep.concurrency[4]",
     "duplicate value 4 (also layers[1].sweep.concurrency[1])"),
    ("sweep of an unknown field", mutate(lambda d: L1(d)["sweep"].update(concurency=[2])), "layers[1].sweep.concurency", "unknown pattern field 'concurency'"),
    ("sweep of no values", mutate(lambda d: L1(d)["sweep"].update(concurrency=[])), "layers[1].sweep.concurrency", "should be non-empty"),
    ("base field of the wrong type", mutate(lambda d: L1(d)["base"].update(prompt_tokens="4k")), "layers[1].base.prompt_tokens", "expected integer, got string"),
    ("base with an unknown field", mutate(lambda d: L1(d)["base"].update(concurency=2)), "layers[1].base.concurency", "unknown pattern field 'concurency'"),
    ("field in base and in the sweep", mutate(lambda d: L1(d)["base"].update(concurrency=2)), "layers[1].base.concurrency", "is also swept"),
    ("sweep sets an id", mutate(lambda d: L1(d)["sweep"].update(id=["p99-x"])), "layers[1].sweep.id", "a sweep sets no id"),
    ("base without a sweep", mutate(lambda d: d["layers"][0].update(base={"prompt_tokens": 1000})), "layers[0]", "'sweep' is a dependency of 'base'"),
    ("layer with neither patterns nor sweep", mutate(lambda d: L1(d).pop("sweep")), "layers[1]", "needs {patterns} or {sweep}"),
    ("template names an unset field", mutate(lambda d: L1(d).update(id_template="p{phase}-{backend}-c{concurrency}-{max_model_len}")),
     "layers[1].id_template", "{max_model_len} names a field that neither base nor sweep sets"),
    ("template of another phase", mutate(lambda d: L1(d).update(id_template="p14-{backend}-{tokens}-c{concurrency}")), "layers[1].id_template",
     "must start with 'p{phase}-' (or 'p99-')"),
    ("template with a format spec", mutate(lambda d: L1(d).update(id_template="p{phase}-{backend}-c{concurrency:03}")), "layers[1].id_template", "does not match"),
    ("template writes an id outside the id rule", mutate(lambda d: L1(d).update(id="L_1", id_template="p{phase}-{layer}-{backend}-{tokens}-c{concurrency}")),
     "layers[1].id_template", "'p99-L_1-unified-4k-c2' does not match"),
    ("sweep id collides with a written pattern",
     mutate(lambda d: d["layers"][0]["patterns"].append({"id": "p99-tcp-4k-c8", "backend": "tcp", "prompt_tokens": 4000, "concurrency": 1})),
     "layers[1].sweep[concurrency[2], backend[1]] (pattern p99-tcp-4k-c8)", "duplicate pattern id 'p99-tcp-4k-c8' (also layers[0].patterns[6])"),
    ("two sweeps expand to one id", mutate(lambda d: d["layers"].append({**L1(d), "id": "L3", "sweep": {"concurrency": [16, 32], "backend": ["tcp"]}})),
     "layers[3].sweep[concurrency[0], backend[0]] (pattern p99-tcp-4k-c16)",
     "duplicate pattern id 'p99-tcp-4k-c16' (also layers[1].sweep[concurrency[3], backend[1]] (pattern p99-tcp-4k-c16))"),
    ("swept memory that does not hold the weights", mutate(lambda d: L1(d)["sweep"].update(gpu_memory_utilization=[0.9, 0.55])),
     "layers[1].sweep[concurrency[0], backend[0], gpu_memory_utilization[1]] (pattern p99-unified-4k-c2-gmu0.55)", "the weights alone do not fit"),
]
IDS = [c[0] for c in CASES]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "text", "path", "reason"), CASES, ids=IDS)
def test_cli_rejects(tmp_path: Path, name: str, text: str, path: str, reason: str) -> None:
    plan = tmp_path / "phase99.json"
    plan.write_text(text)
    out = subprocess.run([sys.executable, "-m", "disagglab", "validate", str(plan)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert any(str(plan) in ln and path in ln and reason in ln for ln in lines), f"expected '{path}' and '{reason}' in:\n{out.stderr}"


def test_all_problems_of_a_file_are_reported(tmp_path: Path) -> None:
    def several(doc: dict) -> None:
        p0(doc)["concurency"] = 2
        doc["layers"][0]["patterns"][1]["backend"] = "rdma"
        doc["infrastructure"]["tp_size"] = True
    plan = tmp_path / "phase99.json"
    plan.write_text(mutate(several))
    out = subprocess.run([sys.executable, "-m", "disagglab", "validate", str(plan)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 2
    for fragment in ("patterns[0].concurency", "patterns[1].backend", "infrastructure.tp_size"):
        assert fragment in out.stderr


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    plan = tmp_path / "phase99.json"
    plan.write_text("\ufeff" + json.dumps(BASE, indent=2), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "disagglab", "validate", str(plan)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def bad_project(tmp_path_factory: pytest.TempPathFactory):
    return make_project(tmp_path_factory.mktemp("bad") / "proj")


@pytest.mark.parametrize(("name", "text", "path", "reason"), CASES, ids=IDS)
def test_snakemake_stops_before_any_job(bad_project, name: str, text: str, path: str, reason: str) -> None:
    plan = bad_project.root / "plans" / "phase99.json"
    plan.write_text(text)
    try:
        out = bad_project.snakemake("results/phase99/L0.done")
    finally:
        plan.unlink()
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert any(ln.startswith("plans/phase99.json") and path in ln and reason in ln for ln in log.splitlines()), log[-3000:]
    assert_clean(log)
    assert not (bad_project.root / "results").exists(), "a rejected plan must write nothing under results/"


def assert_clean(log: str) -> None:
    """The problems alone: no traceback, no frame lines, no Snakemake wrapper around them."""
    for noise in ("Traceback", "InputFunctionException", "WorkflowError", 'File "'):
        assert noise not in log, f"{noise!r} in:\n{log[-3000:]}"


def _two_problems(doc: dict) -> None:
    p0(doc)["concurrency"] = 0
    doc["layers"][1]["sweep"]["backend"][1] = "rdma"  # L1 is a sweep


TWO_PROBLEMS = mutate(_two_problems)
EVERY_KIND_OF_TARGET = [
    "results/phase99/L0.done", "results/phase99/all.done", "results/phase99/runs/p99-unified-1k-c1.json",
    "results/phase99/trials/p99-unified-1k-c1/1.json", "results/phase99/tasks/p99-tcp-1k-c1/producer.json",
    "results/phase99/deploy/p99-tcp-1k-c1.json", "results/phase99/report.html", "results/phase99/summary.csv",
    "results/phase99/mlflow.json", "results/phase99/plan.md",
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("target", EVERY_KIND_OF_TARGET)
def test_any_target_of_a_bad_plan_prints_only_the_problems(bad_project, target: str, dry_run: bool) -> None:
    plan = bad_project.root / "plans" / "phase99.json"
    plan.write_text(TWO_PROBLEMS)
    try:
        out = bad_project.snakemake(*(["-n"] if dry_run else []), target)
    finally:
        plan.unlink()
    log = out.stdout + out.stderr
    assert out.returncode == 1, log[-3000:]
    lines = log.splitlines()
    assert "plans/phase99.json: layers[0].patterns[0].concurrency: 0 is less than the minimum of 1" in lines, log[-3000:]
    assert any(ln.startswith("plans/phase99.json: layers[1].sweep.backend[1]: 'rdma' is not one of") for ln in lines), log[-3000:]
    assert_clean(log)
    assert not (bad_project.root / "results").exists(), "a rejected plan must write nothing under results/"


@pytest.mark.parametrize(("target", "message"), [
    ("results/phase14/runs/p14-TCP-1k-c1.json", "plans/phase14.json: target results/phase14/runs/p14-TCP-1k-c1.json: no pattern "
     "'p14-TCP-1k-c1' in this plan (did you mean 'p14-tcp-1k-c1'? ids are case-sensitive)"),
    ("results/phase14/L7.done", "plans/phase14.json: target results/phase14/L7.done: no layer 'L7' in this plan (layers: L0, L1, L2)"),
    ("results/phase77/L0.done", "plans/phase77.json: plan file not found"),
])
def test_a_target_naming_what_no_plan_has_is_refused_cleanly(bad_project, target: str, message: str) -> None:
    out = bad_project.snakemake("-n", target)
    log = out.stdout + out.stderr
    assert out.returncode == 1 and message in log.splitlines(), log[-3000:]
    assert_clean(log)
    assert not (bad_project.root / "results").exists()
