#!/usr/bin/env python3
"""The single node-side entry point: runs one step of a task definition on this node.

Steps (the control host sequences them across nodes):
  fetch    copy the files a pattern needs from the store by exact key, verifying sha256
  start    start the task's server(s) detached, each in its own process group, wait for health
  bench    start the proxy if the task has one, read /metrics, run the benchmark, read /metrics
  stop     stop every process this node started for the pattern (idempotent)
  collect  copy the node's result and logs for the pattern into the store
  preflight  one role of the NIXL transport preflight (remote/nixl_preflight.py): `target`
           starts in the background (in the ledger, so `stop` ends it), `initiator` runs to
           the end and reports bandwidth and the transport the library says it used

Every process started is written to a ledger (runs/<pattern>/procs.json) before anything
waits on it, so `stop` can always find it again, whoever calls it and however the earlier
step ended. Each step prints one last line `RUNNER-RESULT {json}` and exits 0 on success,
1 on failure; the JSON names the step, the cause and the tail of the relevant log.

Fault injection (tests only): `start` and `bench` take `--fault ROLE=SPEC`, which only the
control side's DISAGGLAB_FAULTS produces (disagglab/faults.py). A server role's SPEC becomes
DISAGG_SIM_FAULT of exactly that server (the stand-in only); `proxy=kill_after_s=S` and
`benchmark=kill_after_s=S` make this runner SIGKILL that process group S seconds after the
benchmark started. Nothing else enables a fault: a task whose env names DISAGG_*/DISAGGLAB_*
variables is refused, and such variables inherited from the caller never reach a child.

Standalone on purpose: stdlib only, never imports the control package (it runs under the
plan's vLLM venv on the nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RUNNER-RESULT "
BINDING_NAMES = frozenset(
    {
        "python", "node_dir", "out_dir", "bind_host", "node1_host", "node2_host",
        "unified_port", "producer_port", "consumer_port", "proxy_port",
        "producer_side_channel_port", "consumer_side_channel_port", "preflight_port",
    }
)
TOKEN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
RESERVED_ENV_PREFIXES = ("DISAGG_", "DISAGGLAB_")
"""Test-only switches (fault injection, control-side config): never from a task, never inherited."""
KILL_FAULT = re.compile(r"^kill_after_s=([0-9]+(?:\.[0-9]+)?)$")
HEALTH_POLL_S = 0.05
LOG_TAIL_LINES = 30
EVIDENCE_METRICS = {
    "transfers": ("vllm:nixl_xfer_time_seconds_count",),
    "failed_transfers": ("vllm:nixl_num_failed_transfers", "vllm:nixl_num_failed_transfers_total"),
    "requests_succeeded": ("vllm:request_success_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}


class StepError(Exception):
    """A step failed; `log` names the log whose tail explains it."""

    def __init__(self, cause: str, log: Path | None = None, exit_status: int | None = None):
        super().__init__(cause)
        self.cause = cause
        self.log = log
        self.exit_status = exit_status


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; unwinds through the step's cleanup."""


# ---------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, doc: Any) -> None:
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    if path is None or not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode(errors="replace")
    return text.splitlines()[-lines:]


def bind(value: Any, bindings: dict[str, str]) -> Any:
    """Replace ${name} tokens word by word; an unknown token is an error, never left in."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in bindings:
                raise StepError(f"task uses ${{{name}}} but no value is bound for it")
            return bindings[name]
        return TOKEN.sub(sub, value)
    if isinstance(value, list):
        return [bind(v, bindings) for v in value]
    if isinstance(value, dict):
        return {k: bind(v, bindings) for k, v in value.items()}
    return value


def proc_starttime(pid: int) -> str | None:
    """Kernel start time of a pid, so a recycled pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, starttime: str | None) -> bool:
    current = proc_starttime(pid)
    if current is None:
        return False
    if starttime is not None and current != starttime:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only members are zombies is dead for our purposes.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# ---------------------------------------------------------------------------- ledger


class Ledger:
    """procs.json: every process group this node started for one pattern."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "procs.json"

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return json.loads(self.path.read_text())

    def add(self, entry: dict[str, Any]) -> None:
        entries = self.load()
        entries.append(entry)
        write_json(self.path, entries)

    def update(self, entries: list[dict[str, Any]]) -> None:
        write_json(self.path, entries)


GATE = 'read -r _ || exit 125; exec 0</dev/null; exec "$@"'
"""sh script a spawned process passes first: the program runs only once the ledger names it."""


def spawn(name: str, argv: list[str], env: dict[str, str], run_dir: Path, ledger: Ledger) -> subprocess.Popen[bytes]:
    """Start argv detached in its own session/process group, logging to logs/<name>.log."""
    log_path = run_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(RESERVED_ENV_PREFIXES)}
    full_env = {**inherited, **env}
    # The child waits at a gate (its stdin) until its ledger entry is written: if this runner is
    # killed in between, the gate reads EOF and the child exits before running anything, so no
    # process can exist that `stop` does not know about.
    if shutil.which(argv[0], path=full_env.get("PATH", os.defpath)) is None:
        raise StepError(f"cannot start {name}: {argv[0]} is not an executable file (or not on PATH)", log_path)
    gate_r, gate_w = os.pipe()
    with log_path.open("ab") as log:
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {json.dumps(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", GATE, name, *argv], stdin=gate_r, stdout=log, stderr=subprocess.STDOUT,
                env=full_env, cwd=run_dir, start_new_session=True,
            )
        except OSError as exc:
            os.close(gate_w)
            raise StepError(f"cannot start {name}: {exc}", log_path) from None
        finally:
            os.close(gate_r)
    try:
        ledger.add({
            "name": name, "pid": proc.pid, "pgid": proc.pid, "starttime": proc_starttime(proc.pid),
            "argv": argv, "log": str(log_path), "started_at": time.time(),
        })
        os.write(gate_w, b"go\n")
    finally:
        os.close(gate_w)
    return proc


def stop_entries(entries: list[dict[str, Any]], grace_s: float, only: set[str] | None = None) -> list[dict[str, Any]]:
    """SIGTERM each live group, then SIGKILL after the grace period. Returns what it did."""
    actions = []
    targets = [e for e in entries if (only is None or e["name"] in only) and not e.get("stopped_at")]
    for entry in targets:
        if pid_alive(entry["pid"], entry.get("starttime")) or group_alive(entry["pgid"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry["pgid"], signal.SIGTERM)
            entry["signal"] = "SIGTERM"
    deadline = time.monotonic() + grace_s
    for entry in targets:
        while group_alive(entry["pgid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(entry["pgid"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry["pgid"], signal.SIGKILL)
            entry["signal"] = "SIGKILL"
            kill_deadline = time.monotonic() + 5
            while group_alive(entry["pgid"]) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
        entry["stopped_at"] = time.time()
        entry["still_alive"] = group_alive(entry["pgid"])
        actions.append({"name": entry["name"], "pid": entry["pid"], "signal": entry.get("signal"), "still_alive": entry["still_alive"]})
    return actions


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes], name: str, log: Path) -> float:
    """Poll url every 50 ms until it answers 200; fail at once if the process dies."""
    start = time.monotonic()
    last_error = "no answer yet"
    while True:
        code = proc.poll()
        if code is not None:
            raise StepError(f"{name} exited with status {code} before it became healthy", log, code)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        if time.monotonic() - start > timeout_s:
            raise StepError(f"{name} not healthy at {url} after {timeout_s:g} s (last: {last_error})", log)
        time.sleep(HEALTH_POLL_S)


def scrape_metrics(url: str) -> dict[str, float]:
    """Sum the KV-transfer evidence counters over all label sets of a Prometheus page."""
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        text = resp.read().decode()
    totals = {key: 0.0 for key in EVIDENCE_METRICS}
    found = {key: False for key in EVIDENCE_METRICS}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, names in EVIDENCE_METRICS.items():
            if name in names:
                with contextlib.suppress(ValueError, IndexError):
                    totals[key] += float(line.rsplit(" ", 1)[1])
                    found[key] = True
    return {**totals, "_present": [k for k, v in found.items() if v]}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- store


class FileStore:
    """The store as a folder (local mode): keys are relative paths below the root."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlparse(url)
        self.root = Path(urllib.parse.unquote(parsed.path))

    def get(self, key: str, dest: Path, sha256: str | None = None) -> None:
        src = self.root / key
        if not src.is_file():
            raise StepError(f"store has no object {key!r} (looked in {self.root})")
        data = src.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise StepError(f"sha256 mismatch for {key!r}: expected {sha256}, store has {hashlib.sha256(data).hexdigest()}")
        atomic_write(dest, data)

    def put(self, src: Path, key: str) -> None:
        atomic_write(self.root / key, src.read_bytes())


class S3Store:
    """The store as an S3 bucket: boto3 when the node's python has it, else the aws CLI.

    Exact keys only (never `aws s3 sync`, which compares sizes and times, not content);
    the caller verifies sha256. AWS_ENDPOINT_URL and the standard credential chain apply.
    """

    def __init__(self, url: str):
        parsed = urllib.parse.urlparse(url)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.region = urllib.parse.parse_qs(parsed.query).get("region", [None])[0]
        try:
            import boto3  # noqa: PLC0415 - optional on nodes
            from botocore.config import Config  # noqa: PLC0415

            config = Config(retries={"mode": "standard", "total_max_attempts": 5})
            self.client = boto3.client("s3", region_name=self.region, config=config)
        except ImportError:
            self.client = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _cli(self, *args: str) -> None:
        argv = ["aws", "s3api", *args] + (["--region", self.region] if self.region else [])
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        except FileNotFoundError:
            raise StepError("neither boto3 nor the aws CLI is available on this node to reach S3") from None
        if out.returncode != 0:
            raise StepError(f"aws s3api {args[0]} failed: {out.stderr.strip()[-500:]}")

    def get(self, key: str, dest: Path, sha256: str | None = None) -> None:
        full = self._key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            if self.client is not None:
                try:
                    self.client.download_file(self.bucket, full, tmp)
                except Exception as exc:  # noqa: BLE001 - botocore errors vary; the message names the key
                    raise StepError(f"cannot fetch s3://{self.bucket}/{full}: {exc}") from None
            else:
                self._cli("get-object", "--bucket", self.bucket, "--key", full, tmp)
            actual = sha256_file(Path(tmp))
            if sha256 is not None and actual != sha256:
                raise StepError(f"sha256 mismatch for {key!r}: expected {sha256}, store has {actual}")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put(self, src: Path, key: str) -> None:
        digest = sha256_file(src)
        full = self._key(key)
        if self.client is not None:
            try:
                self.client.upload_file(str(src), self.bucket, full, ExtraArgs={"Metadata": {"sha256": digest}})
            except Exception as exc:  # noqa: BLE001
                raise StepError(f"cannot upload s3://{self.bucket}/{full}: {exc}") from None
        else:
            self._cli("put-object", "--bucket", self.bucket, "--key", full, "--body", str(src), "--metadata", f"sha256={digest}")


def open_store(url: str) -> FileStore | S3Store:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        return FileStore(url)
    if scheme == "s3":
        return S3Store(url)
    raise StepError(f"store {url!r}: unsupported scheme {scheme!r} (file:// or s3://)")


# ---------------------------------------------------------------------------- steps


def run_dir_for(node_dir: Path, pattern: str) -> Path:
    if not re.match(r"^[a-z0-9][a-z0-9.-]*$", pattern):
        raise StepError(f"invalid pattern id {pattern!r}")
    return node_dir / "runs" / pattern


def load_task(node_dir: Path, rel: str) -> dict[str, Any]:
    path = (node_dir / rel).resolve()
    if node_dir.resolve() not in path.parents:
        raise StepError(f"task path {rel!r} escapes the node folder")
    try:
        task = json.loads(path.read_text())
    except FileNotFoundError:
        raise StepError(f"task definition {rel} is not on this node (was it fetched?)") from None
    if task.get("kind") != "task" or task.get("schema_version") != 1:
        raise StepError(f"{rel} is not a schema_version 1 task definition")
    for i, server in enumerate(task.get("servers", [])):
        reserved = sorted(k for k in server.get("env", {}) if k.startswith(RESERVED_ENV_PREFIXES))
        if reserved:
            raise StepError(f"{rel}: servers[{i}].env sets {', '.join(reserved)}: DISAGG_*/DISAGGLAB_* variables are test-only "
                            "switches and cannot come from a task definition")
    return task


def parse_faults(items: list[str] | None, allowed: set[str]) -> dict[str, str]:
    """--fault ROLE=SPEC arguments (test-only fault injection) -> {role: spec}."""
    faults: dict[str, str] = {}
    for item in items or []:
        role, sep, spec = item.partition("=")
        if not sep or not spec:
            raise StepError(f"--fault {item!r}: expected ROLE=SPEC")
        if role not in allowed:
            raise StepError(f"--fault {item!r}: this step has no role {role!r} (roles here: {', '.join(sorted(allowed))})")
        if role in faults:
            raise StepError(f"--fault: role {role!r} given twice")
        if role in ("proxy", "benchmark") and not KILL_FAULT.match(spec):
            raise StepError(f"--fault {item!r}: the {role} supports only kill_after_s=SECONDS")
        faults[role] = spec
    return faults


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name} (exit status {code})"
    return f"exited with status {code}"


def kill_later(entry: dict[str, Any], after_s: float, log: Path) -> threading.Timer:
    """Fault injection: SIGKILL a process group after a delay, saying so in its log."""
    def fire() -> None:
        with contextlib.suppress(OSError), log.open("ab") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} fault injection (DISAGGLAB_FAULTS): the runner sends SIGKILL "
                     f"to {entry['name']}'s process group {entry['pgid']} after {after_s:g} s\n".encode())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry["pgid"], signal.SIGKILL)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def full_bindings(args: argparse.Namespace, task: dict[str, Any]) -> dict[str, str]:
    given = json.loads(args.bindings)
    unknown = set(given) - BINDING_NAMES
    if unknown:
        raise StepError(f"unknown bindings: {', '.join(sorted(unknown))}")
    node_dir = Path(args.node_dir).resolve()
    out_dir = run_dir_for(node_dir, task["pattern"]) / "out"
    return {**{k: str(v) for k, v in given.items()}, "python": sys.executable, "node_dir": str(node_dir), "out_dir": str(out_dir)}


def step_fetch(args: argparse.Namespace) -> dict[str, Any]:
    node_dir = Path(args.node_dir)
    store = open_store(args.store)
    manifest_path = node_dir / "manifests" / Path(args.manifest_key).name
    store.get(args.manifest_key, manifest_path, args.manifest_sha256)
    manifest = json.loads(manifest_path.read_text())
    fetched, kept = 0, 0
    for item in manifest["files"]:
        dest = (node_dir / item["path"]).resolve()
        if node_dir.resolve() not in dest.parents:
            raise StepError(f"manifest path {item['path']!r} escapes the node folder")
        if dest.exists() and sha256_file(dest) == item["sha256"]:
            kept += 1
            continue
        store.get(item["key"], dest, item["sha256"])
        fetched += 1
    return {"fetched": fetched, "unchanged": kept}


def step_start(args: argparse.Namespace) -> dict[str, Any]:
    node_dir = Path(args.node_dir)
    task = load_task(node_dir, args.task)
    bindings = full_bindings(args, task)
    run_dir = run_dir_for(node_dir, task["pattern"])
    ledger = Ledger(run_dir)
    faults = parse_faults(args.fault, {srv["name"] for srv in task["servers"]})
    if faults and task.get("engine") != "sim":
        raise StepError(f"--fault {', '.join(sorted(faults))}: server faults exist only in the stand-in (engine sim), this task runs {task.get('engine')!r}")
    ready = {}
    for server in task["servers"]:
        argv = bind(server["argv"], bindings)
        env = bind(server.get("env", {}), bindings)
        if server["name"] in faults:
            env["DISAGG_SIM_FAULT"] = faults[server["name"]]
        proc = spawn(server["name"], argv, env, run_dir, ledger)
        log = run_dir / "logs" / f"{server['name']}.log"
        ready[server["name"]] = round(wait_healthy(bind(server["health_url"], bindings), float(server["health_timeout_s"]), proc, server["name"], log), 3)
    return {"healthy_after_s": ready}


def step_bench(args: argparse.Namespace) -> dict[str, Any]:
    node_dir = Path(args.node_dir)
    task = load_task(node_dir, args.task)
    bench = task.get("benchmark")
    if not bench:
        raise StepError(f"task {args.task} has no benchmark")
    bindings = full_bindings(args, task)
    run_dir = run_dir_for(node_dir, task["pattern"])
    ledger = Ledger(run_dir)
    out_dir = Path(bindings["out_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    faults = parse_faults(args.fault, {"benchmark", "proxy"} if task.get("proxy") else {"benchmark"})
    timings: dict[str, float] = {}
    proxy_proc: subprocess.Popen[bytes] | None = None
    proxy_log = run_dir / "logs" / "proxy.log"
    if task.get("proxy"):
        proxy = task["proxy"]
        proxy_proc = spawn("proxy", bind(proxy["argv"], bindings), {}, run_dir, ledger)
        timings["proxy_healthy_after_s"] = round(wait_healthy(bind(proxy["health_url"], bindings), float(proxy["health_timeout_s"]), proxy_proc, "proxy", proxy_log), 3)
    server = next(s for s in task["servers"] if s["name"] == task["role"])
    metrics_url = bind(server["metrics_url"], bindings)
    before = scrape_metrics(metrics_url)
    t0 = time.time()
    bench_log = run_dir / "logs" / "benchmark.log"
    proc = spawn("benchmark", bind(bench["argv"], bindings), {}, run_dir, ledger)
    by_pid = {e["pid"]: e for e in ledger.load()}
    timers = [kill_later(by_pid[p.pid], float(KILL_FAULT.match(faults[role]).group(1)), run_dir / "logs" / f"{role}.log")  # type: ignore[union-attr]
              for role, p in (("proxy", proxy_proc), ("benchmark", proc)) if role in faults and p is not None]
    try:
        code = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
        if proc.poll() is None:
            stop_entries([e for e in ledger.load() if e["pid"] == proc.pid], 2.0)
    t1 = time.time()
    # What died under the benchmark on this node: named in the cause, before the request errors.
    gone = [f"proxy (pid {proxy_proc.pid}) {describe_exit(proxy_proc.poll())} during the benchmark"] if proxy_proc and proxy_proc.poll() is not None else []
    gone += [f"{e['name']} (pid {e['pid']}) is no longer running" for e in ledger.load()
             if e["name"] in {srv["name"] for srv in task["servers"]} and not e.get("stopped_at") and not pid_alive(e["pid"], e.get("starttime"))]
    explain_log = proxy_log if gone and gone[0].startswith("proxy") else bench_log
    try:
        after: dict[str, float] | None = scrape_metrics(metrics_url)
        unreadable = ""
    except (urllib.error.URLError, OSError) as exc:  # the server died under the benchmark: the cause says so
        after, unreadable = None, f"cannot read {metrics_url} after the benchmark ({getattr(exc, 'reason', exc)})"
    if task.get("proxy"):
        entries = ledger.load()
        stop_entries(entries, 5.0, only={"proxy"})
        ledger.update(entries)
    result_file = out_dir / "benchmark.json"
    prefix = "".join(f"{g}; " for g in gone)
    if code != 0 or not result_file.exists():
        cause = f"benchmark {describe_exit(code)}" + ("" if result_file.exists() else " and wrote no result")
        raise StepError(prefix + cause, explain_log if gone else bench_log, code)
    result = json.loads(result_file.read_text())
    failed = int(result.get("failed", 0))
    completed = int(result.get("completed", 0))
    if completed == 0 or failed > int(bench.get("max_failed_requests", 0)):
        errors = "; ".join(f"{e.get('count', '?')}x {e.get('error', e)}" for e in result.get("errors", [])[:3]) if isinstance(result.get("errors"), list) else ""
        raise StepError(prefix + f"{failed} of {failed + completed} measured requests failed (allowed: {bench.get('max_failed_requests', 0)}): {errors}", explain_log)
    if after is None:
        raise StepError(prefix + unreadable, explain_log)
    delta = {k: after[k] - before[k] for k in EVIDENCE_METRICS}
    node_result = {
        "benchmark": result,
        "metrics": {"source": metrics_url, "server": server["name"], "before": before, "after": after, "delta": delta},
        "bench_started_at": t0,
        "bench_finished_at": t1,
        "timings": timings,
    }
    write_json(run_dir / "node-result.json", node_result)
    return {"completed": completed, "failed": failed, "duration_s": round(t1 - t0, 3)}


def step_stop(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = run_dir_for(Path(args.node_dir), args.pattern)
    ledger = Ledger(run_dir)
    entries = ledger.load()
    actions = stop_entries(entries, args.grace)
    if entries:
        ledger.update(entries)
    alive = [a for a in actions if a["still_alive"]]
    if alive:
        raise StepError(f"could not stop: {', '.join(a['name'] + ' pid ' + str(a['pid']) for a in alive)}")
    return {"stopped": actions}


def step_collect(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = run_dir_for(Path(args.node_dir), args.pattern)
    store = open_store(args.store)
    uploaded = []
    candidates = [run_dir / "node-result.json", run_dir / "procs.json", *sorted((run_dir / "logs").glob("*.log"))]
    for path in candidates:
        if path.is_file():
            key = f"{args.output_prefix}/{path.relative_to(run_dir).as_posix()}"
            store.put(path, key)
            uploaded.append({"key": key, "sha256": sha256_file(path)})
    return {"uploaded": uploaded}


def _preflight_error(log: Path, offset: int) -> str | None:
    """The role's own one-line reason (nixl_preflight.py prints it with a fixed prefix)."""
    with contextlib.suppress(OSError):
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        for line in reversed(text.splitlines()):
            if line.startswith("PREFLIGHT-ERROR "):
                return line[len("PREFLIGHT-ERROR "):]
    return None


def step_preflight(args: argparse.Namespace) -> dict[str, Any]:
    """One role of the NIXL preflight, with the pattern's backend and transport environment.

    The processes go into the pattern's ledger like its servers, so `stop` (always sent)
    ends a target that never got its notification.
    """
    node_dir = Path(args.node_dir).resolve()
    run_dir = run_dir_for(node_dir, args.pattern)
    ledger = Ledger(run_dir)
    bindings = json.loads(args.bindings)
    unknown = set(bindings) - BINDING_NAMES
    if unknown:
        raise StepError(f"unknown bindings: {', '.join(sorted(unknown))}")
    script = Path(__file__).resolve().parent / "nixl_preflight.py"
    if not script.is_file():
        raise StepError(f"{script} is not on this node (was it fetched?)")
    env = {str(k): str(v) for k, v in json.loads(args.env).items()}
    port = str(bindings["preflight_port"])
    common = ["--port", port, "--backend", args.backend, "--timeout", f"{args.timeout:g}"]
    name = f"preflight-{args.role}"
    log = run_dir / "logs" / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0

    def fail(cause: str, exit_status: int | None = None) -> StepError:
        entries = ledger.load()
        stop_entries(entries, args.grace, only={name})
        ledger.update(entries)
        own = _preflight_error(log, offset)
        return StepError(f"NIXL preflight {args.role}: {own or cause}", log, exit_status)

    if args.role == "target":
        host = bindings["bind_host"]
        proc = spawn(name, [sys.executable, str(script), "target", "--host", host, *common, "--bytes", str(args.bytes)], env, run_dir, ledger)
        try:
            ready = wait_healthy(f"http://{host}:{port}/health", args.timeout, proc, name, log)
        except StepError as exc:
            raise fail(exc.cause, exc.exit_status) from None
        return {"role": "target", "pid": proc.pid, "ready_after_s": round(ready, 3)}
    report_path = run_dir / "preflight-report.json"
    report_path.unlink(missing_ok=True)
    argv = [sys.executable, str(script), "initiator", "--host", bindings[f"{args.peer}_host"], *common,
            "--iterations", str(args.iterations), "--report", str(report_path)]
    proc = spawn(name, argv, env, run_dir, ledger)
    try:
        code = proc.wait(timeout=args.timeout + 30)
    except subprocess.TimeoutExpired:
        raise fail(f"did not finish within {args.timeout + 30:g} s") from None
    if code != 0 or not report_path.exists():
        raise fail(f"exited with status {code}" + ("" if report_path.exists() else " and wrote no report"), code)
    report = json.loads(report_path.read_text())
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    sys.path.insert(0, str(script.parent))
    from nixl_preflight import classify  # noqa: PLC0415 - a node-side sibling, found beside this file

    report["transport"] = classify(text, args.backend, report.get("op", "READ"))
    report["transport"].pop("tables", None)
    return {"role": "initiator", "preflight": report}


STEPS = {"fetch": step_fetch, "start": step_start, "bench": step_bench, "stop": step_stop, "collect": step_collect,
         "preflight": step_preflight}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="task_runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    f = sub.add_parser("fetch", help="fetch a manifest's files from the store, verifying sha256")
    f.add_argument("--node-dir", required=True)
    f.add_argument("--store", required=True)
    f.add_argument("--manifest-key", required=True)
    f.add_argument("--manifest-sha256", required=True)
    for name in ("start", "bench"):
        s = sub.add_parser(name, help=f"{name} step of a task definition")
        s.add_argument("--node-dir", required=True)
        s.add_argument("--task", required=True, help="task definition path relative to the node folder")
        s.add_argument("--bindings", required=True, help="JSON object of run-time values (hosts, ports)")
        s.add_argument("--grace", type=float, default=10.0)
        s.add_argument("--fault", action="append", metavar="ROLE=SPEC", help="test-only fault injection (from DISAGGLAB_FAULTS)")
    s = sub.add_parser("stop", help="stop every process started for a pattern on this node")
    s.add_argument("--node-dir", required=True)
    s.add_argument("--pattern", required=True)
    s.add_argument("--grace", type=float, default=10.0)
    c = sub.add_parser("collect", help="upload the pattern's node result and logs to the store")
    c.add_argument("--node-dir", required=True)
    c.add_argument("--pattern", required=True)
    c.add_argument("--store", required=True)
    c.add_argument("--output-prefix", required=True)
    pf = sub.add_parser("preflight", help="one role of the NIXL transport preflight between the two nodes")
    pf.add_argument("--node-dir", required=True)
    pf.add_argument("--pattern", required=True, help="the pattern whose ledger records the processes")
    pf.add_argument("--role", choices=("target", "initiator"), required=True)
    pf.add_argument("--bindings", required=True, help="JSON object of run-time values (hosts, preflight_port)")
    pf.add_argument("--peer", choices=("node1", "node2"), default="node1", help="initiator: the node the target runs on")
    pf.add_argument("--backend", default="UCX", help="NIXL backend")
    pf.add_argument("--env", default="{}", help="JSON object: the transport environment of the pattern's backend")
    pf.add_argument("--bytes", type=int, default=64 << 20)
    pf.add_argument("--iterations", type=int, default=3)
    pf.add_argument("--timeout", type=float, default=60.0)
    pf.add_argument("--grace", type=float, default=10.0)
    return p.parse_args(argv)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {"step": args.step, "ok": False}
    try:
        with interrupts_raise():
            try:
                report.update(STEPS[args.step](args))
                report["ok"] = True
            except (StepError, Interrupted, Exception) as exc:  # noqa: BLE001 - any failure is reported, never a traceback
                if isinstance(exc, StepError):
                    report.update(cause=exc.cause, exit_status=exc.exit_status, log=str(exc.log) if exc.log else None, log_tail=log_tail(exc.log))
                elif isinstance(exc, Interrupted):
                    report.update(cause=f"interrupted by {exc}")
                else:
                    report.update(cause=f"{type(exc).__name__}: {exc}")
                # A failed start/bench must not leave what it started running.
                if args.step in ("start", "bench"):
                    with contextlib.suppress(Exception):
                        task = load_task(Path(args.node_dir), args.task)
                        ledger = Ledger(run_dir_for(Path(args.node_dir), task["pattern"]))
                        entries = ledger.load()
                        stop_entries(entries, args.grace)
                        ledger.update(entries)
    except Interrupted as exc:  # a second signal during cleanup
        report.update(cause=f"interrupted by {exc} during cleanup")
    print(RESULT_PREFIX + json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
