"""`make check-vllm-flags`: every server command line of a plan, checked by vLLM's own parser.

The first test needs no vLLM. The others run the real parser of vLLM 0.15.1 (the plans'
vllm_version) from `.venv-argcheck-0.15.1` (built by `make check-vllm-flags`); they carry the
`vllm_cpu` marker with the other real-vLLM tests (`make test-vllm`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from disagglab.paths import PLANS_DIR
from disagglab.plan.config import load_config_file
from disagglab.plan.model import load_plan
from disagglab.tasks.flagcheck import node_config, serve_cases

from conftest import ROOT, Project

ARGCHECK_PYTHON = ROOT / ".venv-argcheck-0.15.1" / "bin" / "python"


def test_cases_are_the_rendered_serve_words_with_every_token_bound() -> None:
    plan = load_plan(PLANS_DIR / "phase14.json")
    cases = serve_cases(plan, "phase14", node_config(load_config_file(), local=False))
    assert len(cases) == sum(len(p.roles) for p in plan.patterns.values())
    by_id = {c["id"]: c["args"] for c in cases}
    producer = by_id["p14-tcp-1k-c1 producer"]
    assert producer[0] == "Qwen/Qwen2.5-7B-Instruct" and producer[producer.index("--port") + 1] == "8100"
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
    out = flagcheck(project, "plans/phase14.json", "plans/phase15.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plans/phase14.json: 50 of 50 server command lines accepted by vLLM 0.15.1" in out.stdout
    # Plant an unknown flag (consumer) and an invalid kv-transfer-config (producer).
    consumer = project.root / "templates" / "disaggregated-consumer.json.jinja2"
    consumer.write_text(consumer.read_text().replace('"--port", "${consumer_port}",', '"--port", "${consumer_port}", "--bogus-flag", "1",'))
    producer = project.root / "templates" / "disaggregated-producer.json.jinja2"
    producer.write_text(producer.read_text().replace('"kv_role": "kv_producer"', '"kv_role": "kv_wrong"'))
    out = flagcheck(project, "plans/phase14.json")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "plans/phase14.json: p14-tcp-1k-c1 consumer: [parse] unrecognized arguments: --bogus-flag 1" in lines
    kv = [line for line in lines if line.startswith("plans/phase14.json: p14-efa-4k-c8 producer: [parse] argument --kv-transfer-config")]
    assert kv and "kv_role" in kv[0] and "kv_wrong" in kv[0]
    assert not any("unified" in line for line in lines if ": [" in line)
    assert "plans/phase14.json: 10 of 50 server command lines accepted by vLLM 0.15.1 (node rendering)" in lines
