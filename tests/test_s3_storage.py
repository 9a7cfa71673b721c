"""S3 storage against a real S3 server (SeaweedFS): upload, skip unchanged, tamper
detection on the node, missing bucket; and a whole layer deployed and collected via S3."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from disagglab.deploy.storage import S3Storage, StorageError

from conftest import ROOT, Project, alive_groups, ledger_entries, make_project


def bucket(seaweed) -> str:
    """One bucket per session (each SeaweedFS bucket claims volumes); tests use their own prefixes."""
    if not getattr(seaweed, "test_bucket", None):
        seaweed.test_bucket = seaweed.create_bucket(f"dl-{uuid.uuid4().hex[:12]}")
    return seaweed.test_bucket


def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_upload_then_skip_unchanged_then_reupload_changed(s3_env, tmp_path: Path) -> None:
    pre = prefix()
    st = S3Storage(bucket(s3_env), prefix=f"{pre}/a")
    src = tmp_path / "f.py"
    src.write_text("print('v1')\n")
    first = st.put_file(src, "phase14/scripts/f.py")
    assert first.uploaded and first.sha256 == hashlib.sha256(b"print('v1')\n").hexdigest()
    head = s3_env.client().head_object(Bucket=st.bucket, Key=f"{pre}/a/phase14/scripts/f.py")
    assert head["Metadata"]["sha256"] == first.sha256
    assert st.put_file(src, "phase14/scripts/f.py").uploaded is False
    src.write_text("print('v2')\n")
    assert st.put_file(src, "phase14/scripts/f.py").uploaded is True
    out = tmp_path / "back.py"
    assert st.get_file("phase14/scripts/f.py", out) == hashlib.sha256(b"print('v2')\n").hexdigest()
    assert out.read_text() == "print('v2')\n"
    assert st.exists("phase14/scripts/f.py") and not st.exists("phase14/scripts/nope.py")
    assert st.url == f"s3://{st.bucket}/{pre}/a"


def test_missing_bucket_is_a_clear_error(s3_env, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    st = S3Storage("no-such-bucket-" + uuid.uuid4().hex[:8])
    with pytest.raises(StorageError, match="does not exist"):
        st.put_file(src, "phase1/f")


def test_node_fetch_rejects_a_tampered_object(s3_env, tmp_path: Path) -> None:
    st = S3Storage(bucket(s3_env), prefix=prefix())
    task = tmp_path / "unified.json"
    task.write_text('{"ok": true}')
    put = st.put_file(task, "phase1/tasks/p1-x/unified.json")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": [{"key": put.key, "path": "tasks/p1-x/unified.json", "sha256": put.sha256}]}))
    m = st.put_file(manifest, "phase1/manifests/p1-x.json")
    # someone edits the task in the bucket after the deploy
    s3_env.client().put_object(Bucket=st.bucket, Key=f"{st.prefix}/{put.key}", Body=b'{"ok": false}', Metadata={"sha256": put.sha256})
    node = tmp_path / "node"
    out = subprocess.run([sys.executable, str(ROOT / "remote/task_runner.py"), "fetch", "--node-dir", str(node), "--store", st.url,
                          "--manifest-key", m.key, "--manifest-sha256", m.sha256], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 1
    report = json.loads(out.stdout.splitlines()[-1].split(" ", 1)[1])
    assert "sha256 mismatch" in report["cause"] and "phase1/tasks/p1-x/unified.json" in report["cause"]
    assert not (node / "tasks/p1-x/unified.json").exists()
    assert not list(node.rglob("*.tmp"))


def test_a_layer_runs_end_to_end_through_s3(seaweed, finished_l0: Project, tmp_path: Path) -> None:
    proj: Project = make_project(tmp_path / "proj")
    name = bucket(seaweed)
    cfg = proj.root / "config/config.yaml"
    pre = prefix()
    cfg.write_text(cfg.read_text().replace("storage: local\n", "storage: s3\n").replace('  prefix: ""', f'  prefix: "{pre}"'))
    env = {**seaweed.env(), "SCRIPTS_BUCKET": name}
    out = proj.snakemake("results/phase14/L0.done", env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    listed = seaweed.client().list_objects_v2(Bucket=name, Prefix=f"{pre}/", MaxKeys=1000).get("Contents", [])
    keys = {o["Key"][len(pre) + 1:] for o in listed}
    assert "phase14/remote/task_runner.py" in keys and "phase14/tasks/p14-tcp-1k-c1/consumer.json" in keys
    assert any(k.startswith("phase14/outputs/p14-tcp-1k-c1/") and k.endswith("node2/node-result.json") for k in keys)
    local = finished_l0  # the same layer run with local storage (only read here)
    for pid in json.loads((proj.root / "results/phase14/L0.done").read_text())["patterns"]:
        r, ref = proj.result("phase14", pid), local.result("phase14", pid)
        assert r["completed"] == ref["completed"] == 30 and r["validity"]["valid"] and ref["validity"]["valid"]
        assert r["provenance"]["storage"] == "s3" and ref["provenance"]["storage"] == "local"
        # the same thing ran: identical task definitions and node-side files, same spec and result keys
        assert r["provenance"]["task_sha256"] == ref["provenance"]["task_sha256"]
        assert r["provenance"]["node_files_sha256"] == ref["provenance"]["node_files_sha256"]
        assert r["spec"] == ref["spec"] and set(r) == set(ref)
        assert r["kv_transfer"]["valid"] == ref["kv_transfer"]["valid"]
    assert alive_groups(ledger_entries(proj.root)) == []
    # a second deploy of a finished pattern uploads nothing, and reruns nothing
    marker = "results/phase14/deploy/p14-tcp-1k-c1.json"
    again = proj.snakemake(marker, "--forcerun", marker, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (proj.root / "results/phase14/logs/p14-tcp-1k-c1/deploy.log").read_text()
    assert "0 uploaded (0 bytes)" in log, log
    dry = proj.snakemake("-n", "results/phase14/L0.done", env=env)
    assert "Nothing to be done" in dry.stdout + dry.stderr
