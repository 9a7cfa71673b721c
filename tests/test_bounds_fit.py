"""Plan bounds that depend on other fields or on config, and the will-it-fit check (disagglab/plan/bounds.py, fit.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from disagglab.errors import PlanError
from disagglab.plan.bounds import max_in_flight
from disagglab.plan.checks import check_plan, plan_findings
from disagglab.plan.config import load_config_file
from disagglab.plan.fit import GIB, kv_bytes_per_token, role_fit
from disagglab.plan.model import load_plan

from conftest import ROOT

CFG = load_config_file()
QWEN7 = CFG["models"]["Qwen/Qwen2.5-7B-Instruct"]
G5_12 = CFG["estimate"]["instances"]["g5.12xlarge"]


def _spec(**over) -> dict:
    spec = {"prompt_tokens": 4000, "max_tokens": 10, "concurrency": 16, "measurement_iterations": 30,
            "measurement_type": "online", "gpu_memory_utilization": 0.9, "max_model_len": 5120,
            "infrastructure": {"tp_size": 1}}
    spec.update(over)
    return spec


def test_qwen7b_on_g5_12xlarge_by_hand() -> None:
    """Qwen2.5-7B-Instruct, tp_size 1, on one A10G of a g5.12xlarge, gpu_memory_utilization 0.9.

    Sources:
    - config.json of Qwen/Qwen2.5-7B-Instruct (https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json):
      num_hidden_layers 28, num_key_value_heads 4, hidden_size 3584 / num_attention_heads 28 = head size 128,
      intermediate_size 18944, vocab_size 152064, tie_word_embeddings false, torch_dtype bfloat16 (2 bytes).
    - parameters: per layer q 3584*3584 + k,v 2*3584*512 + o 3584*3584 + MLP 3*3584*18944 = 233,046,016, plus biases
      3584+512+512 = 4,608 and two RMSNorms 2*3584 = 7,168: 233,057,792; x 28 layers = 6,525,618,176; embeddings and
      lm_head 2*152064*3584 = 1,089,994,752; final norm 3,584: total 7,615,616,512 (model card: "7.61B").
    - g5.12xlarge: 4 NVIDIA A10G, 96 GiB GPU memory = 24 GiB per GPU (AWS EC2 GPU instance tables).
    Hand computation:
    - weights 7,615,616,512 * 2 = 15,231,233,024 B (14.185 GiB) on one GPU (tp 1);
    - usable 0.9 * 24 GiB = 0.9 * 25,769,803,776 = 23,192,823,398.4 B; KV budget 23,192,823,398.4 - 15,231,233,024
      = 7,961,590,374.4 B (7.415 GiB);
    - KV per token 2 * 28 * 4 * 128 * 2 = 57,344 B (56 KiB); capacity floor(7,961,590,374.4 / 57,344) = 138,839 tokens;
    - 16 requests of 4000 + 10 tokens = 64,160 tokens: fits; 30 offline requests of 20,000 + 10 = 600,300: preempts;
      a max_model_len of 139,264 (> 138,839) would not even start.
    """
    assert kv_bytes_per_token(QWEN7, 1) == 57_344
    fit = role_fit(_spec(), "unified", QWEN7, G5_12)
    assert fit.weights_bytes == 15_231_233_024
    assert fit.budget_bytes == pytest.approx(7_961_590_374.4)
    assert fit.capacity_tokens == 138_839
    assert (fit.needed_tokens, fit.verdict) == (64_160, "fits")
    offline = role_fit(_spec(prompt_tokens=20000, measurement_type="offline", max_model_len=20480), "consumer", QWEN7, G5_12)
    assert (offline.in_flight, offline.needed_tokens, offline.verdict) == (30, 600_300, "preempts")
    producer = role_fit(_spec(prompt_tokens=20000, measurement_type="offline", max_model_len=20480), "producer", QWEN7, G5_12)
    assert producer.tokens_per_request == 20_001  # the proxy asks the prefill server for max_tokens 1
    assert role_fit(_spec(max_model_len=139_264), "unified", QWEN7, G5_12).verdict == "error"


def test_tensor_parallel_divides_weights_and_kv() -> None:
    """tp 2: weights 15,231,233,024 / 2 = 7,615,616,512 B and KV 57,344 / 2 = 28,672 B per token per GPU;
    budget 23,192,823,398.4 - 7,615,616,512 = 15,577,206,886.4 B -> floor(/ 28,672) = 543,289 tokens."""
    fit = role_fit(_spec(infrastructure={"tp_size": 2}), "unified", QWEN7, G5_12)
    assert (fit.weights_bytes, fit.kv_bytes_per_token, fit.capacity_tokens) == (7_615_616_512, 28_672, 543_289)


def test_weights_that_do_not_fit_are_an_error() -> None:
    """0.55 * 24 GiB = 14,173,392,076.8 B < 15,231,233,024 B of weights."""
    fit = role_fit(_spec(gpu_memory_utilization=0.55), "unified", QWEN7, G5_12)
    assert fit.budget_bytes < 0 and fit.verdict == "error"


def test_in_flight_limits() -> None:
    assert (max_in_flight("unified"), max_in_flight("tcp"), max_in_flight("efa")) == (960, 320, 320)


def test_existing_plans_validate_phase15_warns_on_preemption() -> None:
    assert plan_findings(load_plan(ROOT / "plans" / "phase14.json"), CFG).warnings == []
    warnings = check_plan(load_plan(ROOT / "plans" / "phase15.json"), CFG)
    assert warnings and all("preempts" in w.reason and w.path.startswith("layers[2].") for w in warnings)


def _plan(tmp_path: Path, edit) -> Path:
    doc = json.loads((ROOT / "plans" / "phase14.json").read_text())
    edit(doc)
    path = tmp_path / "phase14.json"
    path.write_text(json.dumps(doc))
    return path


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disagglab", "validate", str(path)], cwd=ROOT, capture_output=True, text=True, check=False)


def test_concurrency_above_iterations_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = _plan(tmp_path, lambda d: d["layers"][0]["patterns"][0].update(concurrency=64))
    out = _validate(path)
    assert out.returncode == 0, out.stderr
    assert f"WARNING {path}: layers[0].patterns[0].concurrency: concurrency 64 exceeds measurement_iterations 30" in out.stderr


def test_unknown_model_is_noted_not_refused(tmp_path: Path) -> None:
    path = _plan(tmp_path, lambda d: d["infrastructure"].update(model="org/unknown-7b"))
    out = _validate(path)
    assert out.returncode == 0, out.stderr
    assert "infrastructure.model: unknown model 'org/unknown-7b': context not checked" in out.stderr
    assert "memory not checked" in out.stderr


def test_config_dependent_errors_raise_plan_error(tmp_path: Path) -> None:
    path = _plan(tmp_path, lambda d: d["layers"][0]["patterns"][0].update(prompt_tokens=32760))
    with pytest.raises(PlanError) as exc:
        check_plan(load_plan(path), CFG)
    assert "layers[0].patterns[0].prompt_tokens" in str(exc.value) and "exceeds the context" in str(exc.value)


def test_automatic_max_model_len_above_context_says_how_to_fix(tmp_path: Path) -> None:
    cfg = {**CFG, "models": {"Qwen/Qwen2.5-7B-Instruct": {**QWEN7, "context_length": 5000}}}
    path = _plan(tmp_path, lambda d: d["layers"][0]["patterns"][0].update(prompt_tokens=4900))
    errors = plan_findings(load_plan(path), cfg).errors
    assert [(e.path, "set max_model_len <= 5000" in e.reason) for e in errors if e.path.startswith("layers[0].patterns[0].")] == [("layers[0].patterns[0].prompt_tokens", True)]


def test_estimate_lists_the_warnings() -> None:
    from disagglab.estimate.table import estimate, markdown

    text = markdown(estimate(load_plan(ROOT / "plans" / "phase15.json"), CFG, results=Path("/nonexistent"), workdir=Path("/nonexistent")))
    assert "## Warnings" in text and "fits only with preemption" in text


def test_gib() -> None:
    assert GIB == 1_073_741_824


def test_running_sequences_above_vllms_default_cap_is_a_warning(tmp_path: Path) -> None:
    """300 in flight with max_num_batched_tokens 4096: vLLM keeps its default max_num_seqs of 256,
    so 44 requests wait in its queue; the configuration is legal, so this warns, never refuses."""
    def edit(d: dict) -> None:
        d["common_settings"]["measurement_iterations"] = 300
        d["layers"][0]["patterns"][0].update(concurrency=300, max_num_batched_tokens=4096)

    out = _validate(_plan(tmp_path, edit))
    assert out.returncode == 0, out.stderr
    assert "layers[0].patterns[0].concurrency: 300 requests in flight: vLLM runs at most min(256, max_num_batched_tokens) = 256" in out.stderr
    assert "44 of the 300 requests in flight would wait in its queue" in out.stderr
