"""Trace and length-mix workloads (issue 13): read, refused when wrong, replayed, rerun only when edited.

The readers are checked on the shipped samples (both formats, both twins: the control side that
validates and the node side that replays). One Snakemake run with the stand-in replays two small
traces and a length mix; editing one trace then plans only the pattern that replays it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from disagglab.errors import PlanError
from disagglab.paths import ROOT
from disagglab.plan import trace as control
from disagglab.plan.model import load_plan

from conftest import Project, load_script_module, make_project

SAMPLES = {"mooncake": ROOT / "plans/traces/sample.mooncake.jsonl", "azure": ROOT / "plans/traces/sample.azure.csv"}
PHASE = "phase87"


def node_reader():
    return load_script_module("bench_client.workloads.trace_file")


def _as_tuples(requests) -> list[tuple]:
    return [(r.arrival_s, r.input_tokens, r.output_tokens, tuple(r.hash_ids), r.line) for r in requests]


def test_the_shipped_samples_are_the_tools_output(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools/make_sample_traces.py"), str(tmp_path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    for path in SAMPLES.values():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path} is not what tools/make_sample_traces.py writes"


@pytest.mark.parametrize("fmt", ["mooncake", "azure"])
def test_both_samples_load_alike_on_both_sides(fmt: str) -> None:
    text = SAMPLES[fmt].read_text()
    ours, node = control.read_trace(text, fmt), node_reader().read_trace(text, fmt)
    assert _as_tuples(ours) == _as_tuples(node)
    assert len(ours) == 40 and ours[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(ours, ours[1:], strict=False))
    assert ours[-1].arrival_s > 5.0  # arrivals are spread over seconds, not all at once
    assert [r.line for r in ours] == list(range(1, 41)) if fmt == "mooncake" else list(range(2, 42))
    if fmt == "mooncake":  # conversations over three system prompts: blocks are shared
        firsts = {r.hash_ids[:2] for r in ours}
        assert firsts <= {(0, 1), (2, 3), (4, 5)} and len(firsts) == 3
    else:
        assert all(r.hash_ids == () for r in ours)


BAD_LINES = [
    ("mooncake", '{"timestamp": 0, "input_length": 10, "output_length": 2}\n{"timestamp": 5, "output_length": 2}\n', 2, "input_length"),
    ("mooncake", '{"timestamp": 0, "input_length": 10, "output_length": 2}\n{"timestamp": 5, "input_length": 0, "output_length": 2}\n',
     2, "input_length"),
    ("mooncake", '{"timestamp": -1, "input_length": 10, "output_length": 2}\n', 1, "timestamp"),
    ("mooncake", '{"timestamp": 0, "input_length": 10, "output_length": "2"}\n', 1, "output_length"),
    ("mooncake", '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1, "x"]}\n', 1, "hash_ids"),
    ("mooncake", '{"timestamp": 0, "input_length": 10, "output_length": 2}\n{"timestamp": 0, "input_length": 1\n', 2, "(line)"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,2\n2023-11-16 18:15:47,ten,2\n", 3, "ContextTokens"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,2\n16/11/2023 18:15,10,2\n", 3, "TIMESTAMP"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10\n", 2, "(line)"),
    ("azure", "TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:15:46.1,10,2\n", 1, "(header)"),
]


@pytest.mark.parametrize(("fmt", "text", "line", "field"), BAD_LINES)
def test_a_malformed_line_is_refused_naming_file_line_and_field(tmp_path: Path, fmt: str, text: str, line: int, field: str) -> None:
    for reader in (control, node_reader()):
        with pytest.raises(ValueError) as err:
            reader.read_trace(text, fmt)
        assert (err.value.line, err.value.field) == (line, field)
    plan_dir = tmp_path / "plans"
    (plan_dir / "traces").mkdir(parents=True)
    (plan_dir / "traces" / "bad.trace").write_text(text)
    problems = _problems(plan_dir, {"kind": "trace", "file": "traces/bad.trace", "format": fmt})
    assert problems[0].file.endswith("traces/bad.trace") and problems[0].path == f"line {line}, field {field}", problems
    assert len(problems) == 1  # two patterns replay it: said once


def _plan(workload: dict, prompt_tokens: int = 2048, max_tokens: int = 8) -> dict:
    patterns = [{"id": f"p87-unified-{i}", "backend": "unified", "prompt_tokens": prompt_tokens, "concurrency": 2, "workload": workload}
                for i in range(2)]
    return {
        "phase": 87, "name": "workloads", "description": "traces and length mixes",
        "infrastructure": {"instance_type": "g5.12xlarge", "node_count": 2, "model": "Qwen/Qwen2.5-7B-Instruct",
                           "vllm_version": "v0.15.1", "venv_path": "/opt/venv", "gpu_count_per_node": 4, "tp_size": 1},
        "common_settings": {"max_tokens": max_tokens, "warmup_iterations": 1, "measurement_iterations": 6, "gpu_memory_utilization": 0.9,
                            "max_num_batched_tokens": 4096, "measurement_type": "online"},
        "layers": [{"id": "L0", "name": "w", "priority": "P0", "description": "w", "patterns": patterns}],
    }


def _problems(plan_dir: Path, workload: dict, **kw: int) -> list:
    plan_dir.mkdir(parents=True, exist_ok=True)
    (plan_dir / f"{PHASE}.json").write_text(json.dumps(_plan(workload, **kw)))
    with pytest.raises(PlanError) as err:
        load_plan(plan_dir / f"{PHASE}.json")
    return err.value.problems


def test_a_trace_longer_than_the_pattern_allows_names_the_line(tmp_path: Path) -> None:
    plan_dir = tmp_path / "plans"
    (plan_dir / "t").mkdir(parents=True)
    (plan_dir / "t" / "a.jsonl").write_text('{"timestamp": 0, "input_length": 100, "output_length": 8}\n'
                                            '{"timestamp": 9, "input_length": 300, "output_length": 8}\n')
    problems = _problems(plan_dir, {"kind": "trace", "file": "t/a.jsonl", "format": "mooncake"}, prompt_tokens=256)
    assert problems[0].path == "line 2, field input_length" and "300 tokens exceed p87-unified-0's prompt_tokens 256" in problems[0].reason
    # Replaying only the first request fits: the plan loads and measures one request.
    doc = _plan({"kind": "trace", "file": "t/a.jsonl", "format": "mooncake", "max_requests": 1}, prompt_tokens=256)
    (plan_dir / f"{PHASE}.json").write_text(json.dumps(doc))
    assert load_plan(plan_dir / f"{PHASE}.json").pattern("p87-unified-0").spec["measurement_iterations"] == 1


def test_a_missing_or_escaping_trace_is_refused(tmp_path: Path) -> None:
    plan_dir = tmp_path / "plans"
    missing = _problems(plan_dir, {"kind": "trace", "file": "traces/none.jsonl", "format": "mooncake"})
    assert missing[0].file.endswith("traces/none.jsonl") and "trace file not found" in missing[0].reason
    (tmp_path / "outside.jsonl").write_text('{"timestamp": 0, "input_length": 10, "output_length": 2}\n')
    (plan_dir / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    escaping = _problems(plan_dir, {"kind": "trace", "file": "link.jsonl", "format": "mooncake"})
    assert "outside the plan's folder" in escaping[0].reason
    schema = _problems(plan_dir, {"kind": "trace", "file": "../outside.jsonl", "format": "mooncake"})
    assert schema[0].path.endswith("workload.file"), schema


@pytest.mark.parametrize(
    ("workload", "path", "reason"),
    [
        ({"input": {"distribution": "uniform", "min": 10, "max": 3000}, "output": {"distribution": "fixed", "tokens": 4}},
         "workload.input.max", "3000 exceeds the pattern's prompt_tokens 2048"),
        ({"input": {"distribution": "uniform", "min": 100, "max": 10}, "output": {"distribution": "fixed", "tokens": 4}},
         "workload.input.min", "100 is greater than max 10"),
        ({"input": {"distribution": "fixed", "tokens": 10}, "output": {"distribution": "fixed", "tokens": 9}},
         "workload.output.tokens", "9 exceeds the pattern's max_tokens 8"),
        ({"input": {"distribution": "lognormal", "mean": 10, "sigma": 0.5, "max": 3}, "output": {"distribution": "fixed", "tokens": 4}},
         "workload.input.max", "unknown key 'max'"),
    ],
)
def test_a_length_mix_that_cannot_fit_is_refused(tmp_path: Path, workload: dict, path: str, reason: str) -> None:
    problems = _problems(tmp_path / "plans", {"kind": "lengths", **workload})
    hits = [p for p in problems if p.path == f"layers[0].patterns[0].{path}"]
    assert hits and reason in hits[0].reason, problems


def test_length_draws_follow_their_distribution_within_the_cap() -> None:
    lengths = load_script_module("bench_client.workloads.lengths")
    rng = np.random.default_rng(1)
    assert set(lengths.draw_lengths({"distribution": "fixed", "tokens": 7}, 50, 10, rng).tolist()) == {7}
    uniform = lengths.draw_lengths({"distribution": "uniform", "min": 3, "max": 6}, 2000, 10, rng)
    assert set(uniform.tolist()) == {3, 4, 5, 6}
    logn = lengths.draw_lengths({"distribution": "lognormal", "mean": 500, "sigma": 0.4}, 20000, 100000, rng)
    assert abs(logn.mean() - 500) < 10 and logn.min() >= 1
    capped = lengths.draw_lengths({"distribution": "lognormal", "mean": 500, "sigma": 0.4}, 2000, 520, rng)
    assert capped.max() == 520 and lengths.clipped({"distribution": "lognormal"}, capped, 520) > 100


def test_expected_hits_follow_shared_leading_blocks() -> None:
    replay = load_script_module("bench_client.workloads.replay")
    req = node_reader().TraceRequest
    requests = [req(0, 1000, 4, (0, 1)), req(1, 1000, 4, (0, 1)), req(2, 1200, 4, (0, 1, 2)), req(3, 600, 4, (5, 1)), req(4, 100, 4, ())]
    # 2nd: the whole prompt minus the last token, in 16-token blocks (999 -> 992); 3rd: both blocks
    # as far as the 1st materialised them (512 + 488); 4th: its first block is new, nothing hits.
    assert replay.expected_trace_hits(requests, 16) == 992 + 992 + 0 + 0
    prompts = replay.trace_prompts(requests, 1000, 30000, seed=3)
    assert [len(p) for p in prompts] == [1000, 1000, 1200, 600, 100]
    assert np.array_equal(prompts[0], prompts[1]) and np.array_equal(prompts[2][:1000], prompts[0])
    assert prompts[4][0] != prompts[0][0]


# ---------------------------------------------------------------------------- one real run

TRACE_A = "".join(json.dumps({"timestamp": 100 * i, "input_length": 700, "output_length": 3 + i % 3, "hash_ids": [0, 10 + i]}) + "\n"
                  for i in range(8))
TRACE_B = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"2024-05-10 00:00:0{i}.500000,{200 + 50 * i},{2 + i}\n" for i in range(6))


def _run_plan() -> dict:
    doc = _plan({"kind": "trace", "file": "traces/a.jsonl", "format": "mooncake", "time_scale": 0.5}, prompt_tokens=1024)
    pats = doc["layers"][0]["patterns"]
    pats[0].update(id="p87-unified-trace-a", prefix_cache=True, concurrency=1)  # one at a time: the cache sees the ideal order
    pats[1].update(id="p87-unified-trace-b", workload={"kind": "trace", "file": "traces/b.csv", "format": "azure"})
    pats.append({"id": "p87-unified-mix", "backend": "unified", "prompt_tokens": 1024, "concurrency": 2,
                 "workload": {"kind": "lengths", "input": {"distribution": "uniform", "min": 64, "max": 900},
                              "output": {"distribution": "uniform", "min": 1, "max": 8}, "seed": 11}})
    return doc


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_project(tmp_path_factory.mktemp("trace") / "proj")
    (project.root / "plans" / "traces" / "a.jsonl").write_text(TRACE_A)
    (project.root / "plans" / "traces" / "b.csv").write_text(TRACE_B)
    project.write_plan(PHASE, _run_plan())
    out = project.snakemake(f"results/{PHASE}/L0.done", "--cores", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return project


def test_a_trace_is_replayed_at_its_arrival_times_with_its_lengths(ran: Project) -> None:
    a = ran.result(PHASE, "p87-unified-trace-a")
    records = sorted(a["requests"], key=lambda r: r["index"])
    assert len(records) == 8 and a["workload"]["replayed"]["requests"] == 8
    assert [r["scheduled_offset_s"] for r in records] == pytest.approx([0.05 * i for i in range(8)], abs=1e-6)
    assert [r["output_tokens"] for r in records] == [3 + i % 3 for i in range(8)] and a["output_tokens_mismatch"] == 0
    assert all(r["prompt_tokens"] == 700 for r in records)
    check = a["workload"]["prefix_cache"]
    # One shared 512-token block of 700 tokens: 7 of 8 trace requests hit it (the warmup is random).
    # Served one at a time, the stand-in's cache hits exactly that.
    assert check["expected_hit_rate"] == pytest.approx(7 * 512 / (9 * 700))
    assert not check["flagged"] and check["gap"] == pytest.approx(0.0, abs=1e-9), check
    b = ran.result(PHASE, "p87-unified-trace-b")
    assert [r["prompt_tokens"] for r in sorted(b["requests"], key=lambda r: r["index"])] == [200 + 50 * i for i in range(6)]
    assert b["arrival_schedule"] == {"distribution": "trace", "time_scale": 1.0} and a["validity"]["valid"] and b["validity"]["valid"]


def test_a_length_mix_sends_its_drawn_lengths(ran: Project) -> None:
    mix = ran.result(PHASE, "p87-unified-mix")
    records = mix["requests"]
    assert len({r["prompt_tokens"] for r in records}) > 3 and all(64 <= r["prompt_tokens"] <= 900 for r in records)
    assert all(r["output_tokens"] == r["output_tokens_requested"] for r in records) and mix["output_tokens_mismatch"] == 0
    assert mix["workload"]["drawn"]["seed"] == 11


def test_the_trace_is_deployed_and_recorded_with_its_digest(ran: Project) -> None:
    marker = json.loads((ran.root / "results" / PHASE / "deploy" / "p87-unified-trace-a.json").read_text())
    deployed = {f["path"]: f["sha256"] for f in marker["files"]}
    a = ran.result(PHASE, "p87-unified-trace-a")
    assert deployed["plans/traces/a.jsonl"] == a["spec"]["workload"]["sha256"] == control.trace_facts(ran.root / "plans/traces/a.jsonl",
                                                                                                     "mooncake").sha256
    assert "plans/traces/b.csv" not in deployed


def test_editing_a_trace_reruns_only_the_patterns_that_replay_it(ran: Project) -> None:
    target = f"results/{PHASE}/L0.done"
    assert ran.dry_run_jobs(target) == {}
    (ran.root / "plans" / "traces" / "b.csv").write_text(TRACE_B.replace(",2\n", ",3\n"))
    jobs = ran.dry_run_jobs(target)
    assert sorted(j["pattern"] for j in jobs.get("run_trial", [])) == ["p87-unified-trace-b"]


def test_the_node_refuses_a_trace_whose_bytes_are_not_the_planned_ones(tmp_path: Path) -> None:
    client = load_script_module("benchmark_workload")
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE_A)
    workload = {"kind": "trace", "file": "t.jsonl", "format": "mooncake", "sha256": control.trace_facts(trace, "mooncake").sha256}
    assert len(client.read_trace_file(workload, [str(trace)])) == 8
    trace.write_text(TRACE_A + TRACE_A)  # edited after the task was rendered
    with pytest.raises(ValueError, match="the task was rendered for"):
        client.read_trace_file(workload, [str(trace)])
    assert client.read_trace_file({"kind": "lengths"}, []) == []
