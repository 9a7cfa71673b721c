#!/usr/bin/env python3
"""The NIXL transport preflight: a real NIXL transfer between the two nodes of a pair, before
the first tcp/efa pattern, with the pattern's backend and environment and without vLLM. Run
as `target` on node1 and `initiator` on node2 (by the runner's preflight step); `classify`
reads the transport used from the initiator's log. The protocol, the evidence it reads and
why: docs/node-runner.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# twin: remote/runner/preflight.py:ERROR_PREFIX
ERROR_PREFIX = "PREFLIGHT-ERROR "
NOTIF_DONE = b"disagglab-preflight-done"
# The consumer pulls the KV cache from the producer (vLLM NixlConnector's default), so: READ.
OP = "READ"
EXIT_NO_NIXL = 3
INSTALL_HINT = ("install it into this python with: pip install --no-deps nixl-cu12==1.5.1 nixl==1.5.2 numpy "
                "(--no-deps: nixl-cu12 declares torch but does not need it)")
# UCX transport (uct) names -> the transport class the pipeline cares about.
UCT_CLASS = {
    "tcp": "tcp", "srd": "efa", "efa": "efa",
    "posix": "shm", "sysv": "shm", "cma": "shm", "xpmem": "shm", "knem": "shm", "self": "shm",
}
UCX_OP_TABLE = {"READ": "remote memory read", "WRITE": "remote memory write"}


class PreflightError(Exception):
    """A role failed; the message is what the user reads."""


# ---------------------------------------------------------------------------- evidence (pure)

_UCX_LINE = re.compile(r"^\[[0-9.]+\]\s+\[([^\]]*)\]\s+(.*)$")
_UCT_DEV = re.compile(r"\b([a-z][a-z0-9_]*)/([A-Za-z0-9_.:-]+)")
_LF_DISCOVERED = re.compile(r"Discovered (\d+) (EFA|CXI|[A-Za-z]+) devices( \(TCP fallback\))?")
_LF_RAILS = re.compile(r"Created (\d+) rails using provider=([A-Za-z0-9_;-]+)")


def ucx_tables(text: str) -> list[dict[str, Any]]:
    """UCX_PROTO_INFO tables in a log: [{"title", "operation", "rows": [(range, description, config)]}].

    UCX prints each table with one `[time] [host:pid:thread]` prefix per line; the state is
    kept per prefix so that tables of two threads printed at once cannot mix.
    """
    tables: list[dict[str, Any]] = []
    current: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        m = _UCX_LINE.match(raw.strip())
        if not m or not m.group(2).startswith("|"):
            continue
        who, body = m.group(1), m.group(2).strip()
        cells = [c.strip() for c in body.strip("|").split("|")]
        table = current.get(who)
        if len(cells) == 1:
            if "cfg#" in cells[0]:
                table = {"title": cells[0], "operation": "", "rows": []}
                current[who] = table
                tables.append(table)
            elif table is not None and not table["operation"]:
                table["operation"] = cells[0]
        elif len(cells) == 3 and table is not None and cells[:2] != ["Range", "Description"]:
            table["rows"].append(tuple(cells))
    return tables


def _classes(configs: list[str]) -> tuple[list[str], list[str]]:
    devices, classes = [], []
    for config in configs:
        for tl, dev in _UCT_DEV.findall(config):
            devices.append(f"{tl}/{dev}")
            classes.append(UCT_CLASS.get(tl, "unknown"))
    return sorted(set(devices)), sorted(set(classes))


def _one_transport(classes: list[str]) -> str:
    """One name for the data path: the only class, or tcp when TCP carries any part of it."""
    if len(classes) == 1:
        return classes[0]
    if "tcp" in classes:
        return "tcp"
    return "unknown"


def classify_ucx(text: str, op: str = "READ") -> dict[str, Any]:
    tables = [t for t in ucx_tables(text) if not re.search(r"\bself cfg#", t["title"]) and t["rows"]]
    wanted = UCX_OP_TABLE.get(op, "")
    used = [t for t in tables if t["operation"].startswith(wanted)]
    if not used:
        return {"transport": "unknown", "emulated": False, "devices": [], "transports": [], "source": "UCX_PROTO_INFO",
                "evidence": [f"no UCX protocol table for '{wanted}' between the two agents in the initiator's log "
                             f"({len(tables)} other tables; is UCX_PROTO_INFO=y reaching the process?)"],
                "tables": tables}
    rows = [row for t in used for row in t["rows"]]
    devices, classes = _classes([r[2] for r in rows])
    evidence = list(dict.fromkeys(f"{r[1]} | {r[2]}" for r in rows))
    return {
        "transport": _one_transport(classes),
        "emulated": any("emulation" in r[1].lower() for r in rows),
        "devices": devices,
        "transports": classes,
        "source": "UCX_PROTO_INFO",
        "evidence": evidence,
        "tables": used,
    }


def classify_libfabric(text: str) -> dict[str, Any]:
    evidence, providers = [], []
    transport = "unknown"
    for line in text.splitlines():
        found = _LF_DISCOVERED.search(line)
        if found:
            evidence.append(found.group(0))
            kind = found.group(2).lower()
            providers.append(kind)
            transport = "tcp" if found.group(3) or kind in ("tcp", "sockets") else ("efa" if kind == "efa" else "unknown")
        rails = _LF_RAILS.search(line)
        if rails:
            evidence.append(rails.group(0))
            providers.append(rails.group(2).lower())
    providers = sorted(set(providers))
    if transport == "unknown" and providers:
        classes = sorted({"efa" if p.startswith("efa") else "tcp" if p in ("tcp", "sockets") else "unknown" for p in providers})
        transport = _one_transport(classes)
    if not evidence:
        evidence = ["no provider line from NIXL's LIBFABRIC plugin in the initiator's log (NIXL_LOG_LEVEL=INFO was set)"]
    return {"transport": transport, "emulated": transport == "tcp" and "sockets" in providers, "devices": providers,
            "transports": [transport], "source": "NIXL_LOG_LEVEL=INFO (LIBFABRIC plugin)", "evidence": evidence}


def classify(text: str, backend: str, op: str = "READ") -> dict[str, Any]:
    """The transport a NIXL transfer used, from the initiator's log, with the lines that show it."""
    if backend == "UCX":
        return classify_ucx(text, op)
    if backend == "LIBFABRIC":
        return classify_libfabric(text)
    return {"transport": "unknown", "emulated": False, "devices": [], "transports": [], "source": backend,
            "evidence": [f"no transport evidence parser for NIXL backend {backend!r}"]}


# ---------------------------------------------------------------------------- roles


_T0 = time.monotonic()


def _say(msg: str) -> None:
    """A progress line in the role's log, with the seconds since the process started."""
    print(f"[preflight +{time.monotonic() - _T0:.3f}s] {msg}", file=sys.stderr, flush=True)


def _fail(msg: str, code: int = 1) -> None:
    print(ERROR_PREFIX + msg, file=sys.stderr, flush=True)
    sys.exit(code)


def _import_nixl() -> tuple[Any, Any, Any]:
    try:
        import numpy as np  # noqa: PLC0415 - only the roles need it
        from nixl._api import nixl_agent, nixl_agent_config  # noqa: PLC0415
    except ImportError as exc:
        _fail(f"nixl is not importable by {sys.executable}: {exc}; {INSTALL_HINT}", EXIT_NO_NIXL)
    return np, nixl_agent, nixl_agent_config


def _versions() -> dict[str, str | None]:
    """NIXL's distribution version and the UCX library loaded in this process (ucp_get_version_string)."""
    from importlib import metadata  # noqa: PLC0415

    out: dict[str, str | None] = {"nixl": None, "ucx": None}
    for dist in ("nixl-cu12", "nixl-cu13", "nixl"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out["nixl"] = f"{dist} {metadata.version(dist)}"
            break
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1]
            if "/libucp" in path and ".so" in path:
                fn = ctypes.CDLL(path).ucp_get_version_string
                fn.restype = ctypes.c_char_p
                out["ucx"] = fn().decode()
                break
    return out


def _pattern(np: Any, seed: int, nbytes: int) -> Any:
    words = (nbytes + 7) // 8
    return np.random.default_rng(seed).integers(0, 2**63, words, dtype=np.uint64).view(np.uint8)[:nbytes]


def role_target(args: argparse.Namespace) -> int:
    np, nixl_agent, nixl_agent_config = _import_nixl()
    _say("nixl imported")
    seed = int.from_bytes(os.urandom(4), "little")
    buf = _pattern(np, seed, args.bytes).copy()
    try:
        agent = nixl_agent("preflight-target", nixl_agent_config(backends=[args.backend]))
        if args.backend not in agent.backends:
            raise PreflightError(f"NIXL backend {args.backend} could not be created (plugins available: {agent.plugin_list}); see the log above")
        reg = agent.register_memory([(buf.ctypes.data, buf.nbytes, 0, "")], "DRAM", backends=[args.backend])
        peer = json.dumps({"agent_metadata": base64.b64encode(agent.get_agent_metadata()).decode(), "addr": buf.ctypes.data,
                           "length": buf.nbytes, "device": 0, "seed": seed, "backend": args.backend}).encode()
    except PreflightError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - NIXL raises its own error types; the message is what matters
        _fail(f"NIXL target setup failed with backend {args.backend}: {type(exc).__name__}: {exc}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = {"/health": b"ok", "/peer": peer}.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, fmt: str, *a: Any) -> None:
            print("http: " + fmt % a, file=sys.stderr, flush=True)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _say(f"target ready on {args.host}:{args.port}: {args.bytes} bytes registered with {args.backend}")
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            notifs = agent.get_new_notifs()
            if any(NOTIF_DONE in msgs for msgs in notifs.values()):
                _say(f"target: initiator done ({sorted(notifs)})")
                return 0
            time.sleep(0.005)
        _fail(f"target: no notification from the initiator within {args.timeout:g} s")
    finally:
        server.shutdown()
        with contextlib.suppress(Exception):
            agent.deregister_memory(reg, backends=[args.backend])
    return 1


def _fetch_peer(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5.0) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise PreflightError(f"cannot fetch the target's NIXL metadata from {url}: {getattr(exc, 'reason', exc)}") from None
            time.sleep(0.1)


def _wait_done(agent: Any, handle: Any, deadline: float) -> str:
    state = agent.transfer(handle)
    while state == "PROC":
        if time.monotonic() > deadline:
            raise PreflightError("transfer still in progress at the timeout")
        state = agent.check_xfer_state(handle)
    return state


def role_initiator(args: argparse.Namespace) -> int:
    np, nixl_agent, nixl_agent_config = _import_nixl()
    deadline = time.monotonic() + args.timeout
    started = time.time()
    try:
        peer = _fetch_peer(f"http://{args.host}:{args.port}/peer", args.timeout)
        nbytes = int(peer["length"])
        _say(f"peer metadata from {args.host}:{args.port}")
        expected = _pattern(np, int(peer["seed"]), nbytes)
        buf = np.zeros(nbytes, dtype=np.uint8)
        # No progress thread: this process polls the transfer itself (one spinning thread, not two).
        agent = nixl_agent("preflight-initiator", nixl_agent_config(enable_prog_thread=False, backends=[args.backend]))
        if args.backend not in agent.backends:
            raise PreflightError(f"NIXL backend {args.backend} could not be created (plugins available: {agent.plugin_list}); see the log above")
        reg = agent.register_memory([(buf.ctypes.data, nbytes, 0, "")], "DRAM", backends=[args.backend])
        remote = agent.add_remote_agent(base64.b64decode(peer["agent_metadata"]))
        _say(f"agent ready, remote agent {remote.decode() if isinstance(remote, bytes) else remote} added")
        local_descs = agent.get_xfer_descs([(buf.ctypes.data, nbytes, 0)], "DRAM")
        remote_descs = agent.get_xfer_descs([(int(peer["addr"]), nbytes, int(peer["device"]))], "DRAM")
        seconds = []
        for i in range(args.iterations + args.warmup):
            buf.fill(0)
            handle = agent.initialize_xfer(OP, local_descs, remote_descs, remote, backends=[args.backend])
            t0 = time.perf_counter()
            state = _wait_done(agent, handle, deadline)
            elapsed = time.perf_counter() - t0
            agent.release_xfer_handle(handle)
            if state != "DONE":
                raise PreflightError(f"{OP} {i + 1} ended in state {state}")
            if not np.array_equal(buf, expected):
                bad = int(np.count_nonzero(buf != expected))
                raise PreflightError(f"{OP} {i + 1} finished but {bad} of {nbytes} bytes differ from the target's pattern")
            _say(f"{OP} {i + 1}: {nbytes} bytes in {elapsed:.4f} s, verified" + (" (warm-up)" if i < args.warmup else ""))
            if i >= args.warmup:
                seconds.append(elapsed)
        agent.send_notif(remote, NOTIF_DONE)
        agent.deregister_memory(reg, backends=[args.backend])
    except PreflightError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - NIXL raises its own error types; the message is what matters
        _fail(f"NIXL transfer failed with backend {args.backend}: {type(exc).__name__}: {exc}")
    total = sum(seconds)
    report = {
        "ok": True, "op": OP, "backend": args.backend, "bytes": nbytes, "iterations": args.iterations, "warmup": args.warmup,
        "verified": True, "seconds": [round(s, 6) for s in seconds],
        "bandwidth": {"unit": "GB/s", "mean": round(nbytes * len(seconds) / total / 1e9, 4) if total > 0 else None,
                      "best": round(nbytes / min(seconds) / 1e9, 4) if seconds and min(seconds) > 0 else None},
        "target": f"{args.host}:{args.port}", "started_at": started, "finished_at": time.time(),
        "versions": _versions(), "python": sys.executable,
    }
    _write_report(Path(args.report), report)
    # UCX prints its protocol tables through C stdio; flush them into the log before exiting.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
    return 0


# twin: disagglab/hashing.py:atomic_write_json
def _write_report(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nixl_preflight.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    t = sub.add_parser("target", help="register a buffer, serve its metadata, wait for the initiator")
    i = sub.add_parser("initiator", help="read the target's buffer, verify it, measure, report")
    for s in (t, i):
        s.add_argument("--host", required=True, help="target: address to listen on; initiator: the target's address")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--backend", default="UCX", help="NIXL backend (UCX, LIBFABRIC)")
        s.add_argument("--timeout", type=float, default=60.0)
    t.add_argument("--bytes", type=int, required=True)
    i.add_argument("--iterations", type=int, default=3)
    i.add_argument("--warmup", type=int, default=1)
    i.add_argument("--report", required=True, help="where the JSON report goes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return role_target(args) if args.role == "target" else role_initiator(args)


if __name__ == "__main__":
    sys.exit(main())
