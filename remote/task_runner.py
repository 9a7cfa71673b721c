#!/usr/bin/env python3
"""The single node-side entry point: runs one step (fetch, start, bench, stop, collect,
preflight) of a task definition on this node and ends with one `RUNNER-RESULT {json}` line.
What each step does, the ledger, fault injection and which part of remote/runner/ holds
what: docs/node-runner.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Why this file does fetch, stop and collect on its own: the control side puts only this file
# on the node (LocalTransport.prepare, the SSM bootstrap script of disagglab/ssm.py) and then
# runs `fetch`, which brings every other file of the manifest, remote/runner/ included. It also
# sends `stop` and `collect` to a node whose fetch failed (disagglab/orchestrate.py stops and
# collects every prepared node in a `finally`), when runner/ may be missing or left from an
# older deploy. So these three steps, and what they need (the store, the ledger, stopping),
# live here and import nothing from runner/; start, bench and preflight run only after a fetch
# succeeded, and import their parts lazily (_part).

# twin: disagglab/run/transport.py:RESULT_PREFIX
RESULT_PREFIX = "RUNNER-RESULT "
LOG_TAIL_LINES = 30
# twin: config/schemas/plan.schema.json:$defs.pattern.properties.id.pattern
PATTERN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


class StepError(Exception):
    """A step failed; `log` names the log whose tail explains it."""

    def __init__(self, cause: str, log: Path | None = None, exit_status: int | None = None):
        super().__init__(cause)
        self.cause = cause
        self.log = log
        self.exit_status = exit_status


# twin: disagglab/errors.py:Interrupted
class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; unwinds through the step's cleanup."""


# ---------------------------------------------------------------------------- files


# twin: disagglab/hashing.py:sha256_file
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# twin: disagglab/hashing.py:atomic_write_bytes
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


# twin: disagglab/hashing.py:atomic_write_json
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


def run_dir_for(node_dir: Path, pattern: str) -> Path:
    if not PATTERN_ID.fullmatch(pattern):  # fullmatch: "$" alone would let a trailing newline through
        raise StepError(f"invalid pattern id {pattern!r}")
    return node_dir / "runs" / pattern


# ---------------------------------------------------------------------------- processes


# twin: disagglab/procs.py:starttime
def proc_starttime(pid: int) -> str | None:
    """Kernel start time of a pid, so a recycled pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


# twin: disagglab/run/ledger.py:alive
def pid_alive(pid: int, starttime: str | None) -> bool:
    current = proc_starttime(pid)
    if current is None:
        return False
    if starttime is not None and current != starttime:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


# twin: disagglab/run/ledger.py:group_alive
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


# ---------------------------------------------------------------------------- the steps that need only this file


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


# ---------------------------------------------------------------------------- the parts in runner/


def _as_module() -> types.ModuleType:
    """This file's names as a module, for a loader that did not put this module in sys.modules."""
    module = types.ModuleType("task_runner", __doc__)
    module.__dict__.update({k: v for k, v in globals().items() if not k.startswith("__")}, __file__=__file__)
    return module


def _part(name: str) -> types.ModuleType:
    """runner/<name>.py beside this file (it came with the fetch), imported when a step needs it."""
    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:  # loaded by path (tests), not run as remote/task_runner.py
        sys.path.insert(0, str(here))
    # The parts import StepError, Ledger and the file helpers from this file as `task_runner`.
    # Run as a script this module is __main__ (a test may load it under yet another name): a
    # second copy imported as task_runner would bring a StepError that main() does not know.
    if "task_runner" not in sys.modules:
        sys.modules["task_runner"] = sys.modules.get(__name__) or _as_module()
    try:
        return importlib.import_module(f"runner.{name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != "runner" and not missing.startswith("runner."):
            raise
        path = here / "runner" if missing == "runner" else here / (missing.replace(".", "/") + ".py")
        raise StepError(f"{path} is not on this node (was it fetched?)") from None


STEPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fetch": step_fetch, "stop": step_stop, "collect": step_collect,
    "start": lambda args: _part("start").step_start(args),
    "bench": lambda args: _part("bench").step_bench(args),
    "preflight": lambda args: _part("preflight").step_preflight(args),
}
PARTS = ("bindings", "faults", "task", "procs", "health", "metrics", "start", "bench", "preflight")


def __getattr__(name: str) -> Any:
    """The runner's names that moved into runner/ (spawn, bind, ...), for code that imports this file."""
    if not name.startswith("__"):
        for part in PARTS:
            try:
                module = _part(part)
            except StepError as exc:  # runner/ not fetched: the name is not here, say why
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {exc.cause}") from None
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------- command line


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
# twin: disagglab/run/trial.py:interrupts_raise
def interrupts_raise() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _stop_what_the_step_started(args: argparse.Namespace) -> None:
    """A failed start/bench must not leave what it started running."""
    with contextlib.suppress(Exception):
        task = _part("task").load_task(Path(args.node_dir), args.task)
        ledger = Ledger(run_dir_for(Path(args.node_dir), task["pattern"]))
        entries = ledger.load()
        stop_entries(entries, args.grace)
        ledger.update(entries)


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
                if args.step in ("start", "bench"):
                    _stop_what_the_step_started(args)
    except Interrupted as exc:  # a second signal during cleanup
        report.update(cause=f"interrupted by {exc} during cleanup")
    print(RESULT_PREFIX + json.dumps(report, sort_keys=True), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
