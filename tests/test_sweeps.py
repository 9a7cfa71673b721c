"""Sweeps (issue 12): a layer's patterns written once expand, in load_plan, to the ids stated.

phase14 L1 is a sweep: it must keep its ids and render byte-identical tasks, so a finished L1
stays finished; appending a value to a sweep plans only the new patterns.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from disagglab.plan import sweep
from disagglab.plan.config import load_sources, merge, validate_config
from disagglab.plan.model import load_plan
from disagglab.tasks.dag import Phases

from conftest import ROOT, make_project

WRITTEN = ROOT / "tests" / "data" / "sweeps" / "phase14-written.json"
"""plans/phase14.json as it was before its L1 became a sweep: twelve hand-written patterns."""
PHASE14 = json.loads((ROOT / "plans" / "phase14.json").read_text())


def plan_with(tmp_path: Path, layer: dict, phase: int = 14) -> dict[str, dict]:
    doc = copy.deepcopy(PHASE14)
    doc["phase"] = phase
    doc["layers"] = [{"id": "L5", "name": "sweep", "priority": "P1", "description": "", **layer}]
    path = tmp_path / f"phase{phase}.json"
    path.write_text(json.dumps(doc))
    return {pid: p.spec for pid, p in load_plan(path).patterns.items()}


def test_phase14_l1_expands_to_its_written_ids_in_their_order() -> None:
    l1 = load_plan(ROOT / "plans/phase14.json").layer("L1")
    written = json.loads(WRITTEN.read_text())["layers"][1]["patterns"]
    assert list(l1.pattern_ids) == [p["id"] for p in written]
    assert l1.pattern_ids[:4] == ("p14-unified-4k-c2", "p14-tcp-4k-c2", "p14-efa-4k-c2", "p14-unified-4k-c4")


def test_default_template_names_the_layer_and_tokens_follow_the_seed(tmp_path: Path) -> None:
    specs = plan_with(tmp_path, {"base": {"backend": "tcp", "concurrency": 1}, "sweep": {"prompt_tokens": [1000, 1500, 20000, 999]}})
    assert list(specs) == ["p14-L5-tcp-1k-c1", "p14-L5-tcp-1500-c1", "p14-L5-tcp-20k-c1", "p14-L5-tcp-999-c1"]
    assert specs["p14-L5-tcp-1500-c1"]["prompt_tokens"] == 1500


def test_product_order_is_the_first_key_outermost(tmp_path: Path) -> None:
    specs = plan_with(tmp_path, {"id_template": "p{phase}-{backend}-{tokens}-c{concurrency}", "base": {"prompt_tokens": 2000},
                                 "sweep": {"backend": ["unified", "tcp"], "concurrency": [1, 8]}})
    assert list(specs) == ["p14-unified-2k-c1", "p14-unified-2k-c8", "p14-tcp-2k-c1", "p14-tcp-2k-c8"]


def test_swept_fields_the_template_does_not_name_get_a_suffix(tmp_path: Path) -> None:
    specs = plan_with(tmp_path, {"id_template": "p{phase}-{backend}-c{concurrency}", "base": {"backend": "efa", "concurrency": 2},
                                 "sweep": {"max_num_batched_tokens": [8192], "prompt_tokens": [4000], "prefix_cache": [True, False],
                                           "gpu_memory_utilization": [0.85], "slo": [{"ttft_ms": 500, "e2el_ms": 2000}]}})
    assert list(specs) == ["p14-efa-c2-mnbt8192-4k-pcon-gmu0.85-sem2000.tm500", "p14-efa-c2-mnbt8192-4k-pcoff-gmu0.85-sem2000.tm500"]
    assert specs["p14-efa-c2-mnbt8192-4k-pcon-gmu0.85-sem2000.tm500"]["max_num_batched_tokens"] == 8192
    # a field the template names gets no suffix, whatever its position in the template
    named = plan_with(tmp_path, {"id_template": "p{phase}-mnbt{max_num_batched_tokens}-{backend}-{tokens}-c{concurrency}",
                                 "base": {"backend": "tcp", "prompt_tokens": 4000, "concurrency": 4}, "sweep": {"max_num_batched_tokens": [8192]}})
    assert list(named) == ["p14-mnbt8192-tcp-4k-c4"]


def test_appending_a_value_keeps_every_existing_id(tmp_path: Path) -> None:
    layer = {"base": {"prompt_tokens": 4000}, "sweep": {"concurrency": [2, 4], "backend": ["unified", "tcp"], "max_num_batched_tokens": [4096]}}
    before = plan_with(tmp_path, layer)
    for key, value in (("concurrency", 16), ("backend", "efa"), ("max_num_batched_tokens", 8192)):
        layer["sweep"][key] = [*layer["sweep"][key], value]
        after = plan_with(tmp_path, layer)
        assert set(before) < set(after)
        assert all(after[pid] == spec for pid, spec in before.items())  # same id, same pattern
        before = after


def test_two_swept_fields_with_one_suffix_are_refused() -> None:
    layer = {"id": "L1", "base": {"backend": "tcp", "prompt_tokens": 1000, "concurrency": 1}, "sweep": {"prefill_tp": [1], "pipeline_tokens": [2]}}
    problems = sweep._layer_problems(layer, 1, 14, {"prefill_tp", "pipeline_tokens", "backend", "prompt_tokens", "concurrency"}, "f")
    assert [(p.path, "its id suffix '-pt'<value> is also that of 'prefill_tp'" in p.reason) for p in problems
            if p.path.startswith("layers[1].sweep.")] == [("layers[1].sweep.pipeline_tokens", True)]


def _config(aws: bool) -> dict:
    sources = load_sources([ROOT / "config/config.yaml", *([ROOT / "config/aws.yaml"] if aws else [])])
    return validate_config(merge(sources), "config", sources)


@pytest.mark.parametrize("aws", [False, True], ids=["local", "aws"])
def test_phase14_renders_byte_identical_tasks_as_a_sweep(tmp_path: Path, aws: bool) -> None:
    (tmp_path / "phase14.json").write_bytes(WRITTEN.read_bytes())
    cfg = _config(aws)
    before, after = Phases(tmp_path, cfg), Phases(ROOT / "plans", cfg)
    old, new = before.plan("phase14"), after.plan("phase14")
    assert [(lay.id, lay.pattern_ids) for lay in old.layers] == [(lay.id, lay.pattern_ids) for lay in new.layers]
    assert len(new.patterns) == 30
    for pid, pattern in new.patterns.items():
        assert (pattern.layer, pattern.spec, pattern.repeats) == (old.patterns[pid].layer, old.patterns[pid].spec, old.patterns[pid].repeats)
        for role in pattern.roles:
            assert after.task_digest("phase14", pid, role) == before.task_digest("phase14", pid, role), (pid, role)


def measured(jobs: dict) -> list[str]:
    return sorted(j["pattern"] for j in jobs.get("run_trial", []))


def test_a_finished_layer_stays_finished_as_a_sweep_and_appending_plans_only_the_new(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    doc = json.loads(WRITTEN.read_text())
    doc["common_settings"].update(warmup_iterations=2, measurement_iterations=4)
    doc["layers"][1]["patterns"] = doc["layers"][1]["patterns"][:2]  # p14-unified-4k-c2, p14-tcp-4k-c2
    proj.write_plan("phase14", doc)
    target = "results/phase14/L1.done"
    out = proj.snakemake(target)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    l1 = {k: v for k, v in doc["layers"][1].items() if k != "patterns"}
    l1.update(id_template="p{phase}-{backend}-{tokens}-c{concurrency}", base={"prompt_tokens": 4000},
              sweep={"concurrency": [2], "backend": ["unified", "tcp"]})
    doc["layers"][1] = l1
    proj.write_plan("phase14", doc)
    assert proj.dry_run_jobs(target) == {}  # the same ids, the same tasks: nothing to do

    l1["sweep"]["concurrency"].append(4)
    proj.write_plan("phase14", doc)
    assert measured(proj.dry_run_jobs(target)) == ["p14-tcp-4k-c4", "p14-unified-4k-c4"]
    l1["sweep"]["concurrency"].pop()
    l1["sweep"]["backend"].append("efa")  # the inner key: the new pattern lands between old ones in the layer
    proj.write_plan("phase14", doc)
    assert measured(proj.dry_run_jobs(target)) == ["p14-efa-4k-c2"]
    listed = proj.cli("list", "phase14")
    assert all(pid in listed for pid in ("p14-unified-4k-c2", "p14-tcp-4k-c2", "p14-efa-4k-c2"))
