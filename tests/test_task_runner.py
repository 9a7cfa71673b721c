"""The node-side runner on its own: exact-key fetch with sha256, bindings, stop."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, alive_groups

RUNNER = ROOT / "remote" / "task_runner.py"


def run(*args: str, runner: Path = RUNNER) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, str(runner), *args], capture_output=True, text=True, timeout=60, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RUNNER-RESULT ")][-1]
    return out.returncode, json.loads(line[len("RUNNER-RESULT "):])


def put(store: Path, key: str, data: bytes) -> str:
    (store / key).parent.mkdir(parents=True, exist_ok=True)
    (store / key).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def manifest(store: Path, files: list[dict]) -> tuple[str, str]:
    sha = put(store, "phase1/manifests/p1-x.json", json.dumps({"files": files}).encode())
    return "phase1/manifests/p1-x.json", sha


def test_fetch_verifies_sha256_and_skips_unchanged(tmp_path: Path) -> None:
    store, node = tmp_path / "store", tmp_path / "node"
    sha = put(store, "phase1/scripts/a.py", b"print(1)\n")
    key, msha = manifest(store, [{"key": "phase1/scripts/a.py", "path": "scripts/a.py", "sha256": sha}])
    code, rep = run("fetch", "--node-dir", str(node), "--store", store.as_uri(), "--manifest-key", key, "--manifest-sha256", msha)
    assert code == 0 and rep["fetched"] == 1
    assert (node / "scripts/a.py").read_bytes() == b"print(1)\n"
    code, rep = run("fetch", "--node-dir", str(node), "--store", store.as_uri(), "--manifest-key", key, "--manifest-sha256", msha)
    assert code == 0 and rep == {**rep, "fetched": 0, "unchanged": 1}


def test_fetch_refuses_a_file_edited_in_the_store(tmp_path: Path) -> None:
    store, node = tmp_path / "store", tmp_path / "node"
    sha = put(store, "phase1/tasks/p1-x/unified.json", b"{}")
    put(store, "phase1/tasks/p1-x/unified.json", b'{"edited": true}')
    key, msha = manifest(store, [{"key": "phase1/tasks/p1-x/unified.json", "path": "tasks/p1-x/unified.json", "sha256": sha}])
    code, rep = run("fetch", "--node-dir", str(node), "--store", store.as_uri(), "--manifest-key", key, "--manifest-sha256", msha)
    assert code == 1 and "sha256 mismatch" in rep["cause"] and "phase1/tasks/p1-x/unified.json" in rep["cause"]
    assert not (node / "tasks/p1-x/unified.json").exists()


def test_fetch_refuses_paths_outside_the_node_folder(tmp_path: Path) -> None:
    store, node = tmp_path / "store", tmp_path / "node"
    sha = put(store, "phase1/x", b"x")
    key, msha = manifest(store, [{"key": "phase1/x", "path": "../escape", "sha256": sha}])
    code, rep = run("fetch", "--node-dir", str(node), "--store", store.as_uri(), "--manifest-key", key, "--manifest-sha256", msha)
    assert code == 1 and "escapes" in rep["cause"]
    assert not (tmp_path / "escape").exists()


def test_fetch_stop_and_collect_need_only_the_entry_file(tmp_path: Path) -> None:
    """The control side puts only remote/task_runner.py on a node before `fetch`, and stops and
    collects a node whose fetch failed: those steps must not need remote/runner/."""
    store, node = tmp_path / "store", tmp_path / "node"
    runner = node / "remote" / "task_runner.py"
    runner.parent.mkdir(parents=True)
    runner.write_bytes(RUNNER.read_bytes())
    where = ["--node-dir", str(node), "--pattern", "p1-x"]
    code, rep = run("stop", *where, runner=runner)
    assert code == 0 and rep["stopped"] == [], rep
    code, rep = run("collect", *where, "--store", store.as_uri(), "--output-prefix", "out", runner=runner)
    assert code == 0 and rep["uploaded"] == [], rep
    _task(node, ["${python}", "-c", "pass"], "http://127.0.0.1:9/health")
    start = ["start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", json.dumps({"bind_host": "127.0.0.1"})]
    code, rep = run(*start, runner=runner)
    assert code == 1 and rep["cause"] == f"{node / 'remote/runner'} is not on this node (was it fetched?)", rep
    parts = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "remote" / "runner").glob("*.py"))
    files = [{"key": f"phase1/{rel}", "path": rel, "sha256": put(store, f"phase1/{rel}", (ROOT / rel).read_bytes())} for rel in parts]
    key, msha = manifest(store, files)
    code, rep = run("fetch", "--node-dir", str(node), "--store", store.as_uri(), "--manifest-key", key, "--manifest-sha256", msha, runner=runner)
    assert code == 0 and rep["fetched"] == len(parts) > 1, rep
    code, rep = run(*start, runner=runner)
    assert code == 1 and "exited with status 0 before it became healthy" in rep["cause"], rep


def _task(node: Path, argv: list[str], health: str) -> None:
    task = {"schema_version": 1, "kind": "task", "phase": "phase1", "pattern": "p1-x", "role": "unified", "node": "node1",
            "servers": [{"name": "unified", "argv": argv, "env": {"MARK": "${bind_host}"}, "health_url": health, "health_timeout_s": 0.6}]}
    (node / "tasks/p1-x").mkdir(parents=True, exist_ok=True)
    (node / "tasks/p1-x/unified.json").write_text(json.dumps(task))


def test_unknown_binding_token_is_an_error_not_left_in_argv(tmp_path: Path) -> None:
    node = tmp_path / "node"
    _task(node, ["${python}", "-c", "print('${nope}')"], "http://127.0.0.1:9/health")
    code, rep = run("start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", json.dumps({"bind_host": "127.0.0.1"}))
    assert code == 1 and "${nope}" in rep["cause"]


def test_start_failure_stops_what_it_started_and_stop_is_idempotent(tmp_path: Path) -> None:
    node = tmp_path / "node"
    # a "server" that never answers health: sleeps, and has a child in its group
    _task(node, ["${python}", "-c", "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"], "http://127.0.0.1:9/health")
    code, rep = run("start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", json.dumps({"bind_host": "127.0.0.1"}), "--grace", "1")
    assert code == 1 and "not healthy" in rep["cause"] and "after 0.6 s" in rep["cause"]
    entries = json.loads((node / "runs/p1-x/procs.json").read_text())
    assert len(entries) == 1 and entries[0]["stopped_at"]
    time.sleep(0.2)
    assert alive_groups(entries) == []
    for _ in range(2):
        code, rep = run("stop", "--node-dir", str(node), "--pattern", "p1-x")
        assert code == 0 and rep["stopped"] == []


def test_server_that_exits_during_start_is_reported_with_its_log(tmp_path: Path) -> None:
    node = tmp_path / "node"
    _task(node, ["${python}", "-c", "import sys; print('boom: CUDA out of memory'); sys.exit(3)"], "http://127.0.0.1:9/health")
    code, rep = run("start", "--node-dir", str(node), "--task", "tasks/p1-x/unified.json", "--bindings", json.dumps({"bind_host": "127.0.0.1"}))
    assert code == 1 and "exited with status 3" in rep["cause"]
    assert any("CUDA out of memory" in line for line in rep["log_tail"])


@pytest.mark.parametrize("bad", ["../etc", "p1-x\n", "p1-x;id", ".p1"])  # upper case is valid since the seed ids (P1-X is an id)
def test_stop_rejects_bad_pattern_ids(tmp_path: Path, bad: str) -> None:
    code, rep = run("stop", "--node-dir", str(tmp_path), "--pattern", bad)
    assert code == 1 and "invalid pattern id" in rep["cause"]


def test_local_storage_uploads_only_changed_bytes(tmp_path: Path) -> None:
    from disagglab.deploy.storage import LocalStorage

    src = tmp_path / "f.txt"
    src.write_text("a")
    st = LocalStorage(tmp_path / "store")
    assert st.put_file(src, "phase1/f.txt").uploaded is True
    assert st.put_file(src, "phase1/f.txt").uploaded is False
    src.write_text("b")
    assert st.put_file(src, "phase1/f.txt").uploaded is True
    with pytest.raises(ValueError):
        st.put_file(src, "../outside")
    assert os.listdir(tmp_path / "store" / "phase1") == ["f.txt"]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _runner_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_runner_under_test", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_process_runs_only_after_its_ledger_entry_is_written(tmp_path: Path) -> None:
    """A runner killed between starting a child and recording it leaves no process `stop` cannot find."""
    runner = _runner_module()
    marker = tmp_path / "ran"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]

    class BrokenLedger:
        def add(self, entry: dict) -> None:
            raise OSError("disk full")  # stands for the runner dying before the entry is on disk

    with pytest.raises(OSError, match="disk full"):
        runner.spawn("victim", argv, {}, tmp_path, BrokenLedger())
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(marker)) == [], "the gated child must exit on its own"
    assert not marker.exists(), "the program must never run without a ledger entry"

    recorded: list[dict] = []

    class Ledger:
        def add(self, entry: dict) -> None:
            recorded.append(entry)

    proc = runner.spawn("fine", argv, {}, tmp_path, Ledger())
    assert proc.wait(timeout=30) == 0 and marker.exists()
    assert recorded[0]["pid"] == proc.pid == recorded[0]["pgid"] and recorded[0]["argv"] == argv
    with pytest.raises(runner.StepError, match="not an executable file"):
        runner.spawn("missing", ["/nonexistent/vllm", "serve"], {}, tmp_path, Ledger())
