"""The peer load generators (aiperf, guidellm) for bench/client_fidelity.py: install, run, parse.

Install (see /work/shared/reference/peer-clients.md): each peer gets its own
virtual environment under ``bench/.venvs/<peer>`` built from PyPI with the
machine's ordinary pip configuration:

* ``aiperf==0.13.0`` (no torch);
* ``guidellm==0.8.1`` plus ``torch==2.13.0+cpu``: guidellm hard-requires
  torch, and an unpinned install pulls torch with the CUDA stack (several GB).
  The ``+cpu`` build is not on PyPI itself; here it comes from the local wheel
  cache that pip is configured with.  Without it guidellm is reported as
  unavailable rather than downloading CUDA wheels.

A venv is reused when its marker file names the same requirements and the
tool answers ``--version``.  The tokenizer both tools need is built locally
by ``fidelity_tokenizer.py`` (no hub download; ``HF_HUB_OFFLINE=1`` at run
time).  A peer that cannot be installed, or whose run fails, is reported with
the reason instead of stopping the bench.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fidelity_common import Procs, tail

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
INSTALL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class PeerSpec:
    name: str
    version: str
    requirements: tuple[str, ...]
    exe: str


PEERS: dict[str, PeerSpec] = {
    "aiperf": PeerSpec("aiperf", "0.13.0", ("aiperf==0.13.0",), "aiperf"),
    "guidellm": PeerSpec("guidellm", "0.8.1", ("guidellm==0.8.1", "torch==2.13.0+cpu"), "guidellm"),
}


@dataclass
class PeerStatus:
    spec: PeerSpec
    venv: Path
    available: bool = False
    reason: str = ""
    install_s: float = 0.0
    reused: bool = False

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def exe(self) -> Path:
        return self.venv / "bin" / self.spec.exe


def _marker(venv: Path) -> Path:
    return venv / ".fidelity-installed.json"


def _version_ok(status: PeerStatus, procs: Procs, log: Path) -> bool:
    """The tool runs and reports the pinned version."""
    if not status.exe.exists():
        return False
    out = log.with_suffix(".version.log")
    out.unlink(missing_ok=True)
    code = procs.run([str(status.exe), "--version"], out, timeout_s=120, env=offline_env())
    return code == 0 and status.spec.version in out.read_text(errors="replace")


def start_install(spec: PeerSpec, procs: Procs, reinstall: bool) -> tuple[PeerStatus, Any]:
    """Begin installing one peer (in the background); returns its status and a finisher."""
    venv = VENVS / spec.name
    log = VENVS / f"{spec.name}-install.log"
    status = PeerStatus(spec, venv)
    marker = _marker(venv)
    if not reinstall and marker.exists():
        try:
            same = json.loads(marker.read_text()).get("requirements") == list(spec.requirements)
        except (OSError, ValueError):
            same = False
        if same and _version_ok(status, procs, log):
            status.available, status.reused = True, True
            return status, None
    VENVS.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# installing {spec.name}: {' '.join(spec.requirements)}\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # One shell-free chain: fresh venv, current pip, the pinned packages.
    script = (
        "set -e\n"
        f'rm -rf "{venv}"\n'
        f'"{sys.executable}" -m venv "{venv}"\n'
        f"{' '.join(pip)} install -q -U pip\n"
        f"{' '.join(pip)} install {' '.join(shlex.quote(r) for r in spec.requirements)}\n"
    )
    t0 = time.monotonic()
    proc = procs.start(["bash", "-c", script], log, env=install_env())

    def finish() -> PeerStatus:
        try:
            code = proc.wait(timeout=max(1.0, INSTALL_TIMEOUT_S - (time.monotonic() - t0)))
        except Exception:  # noqa: BLE001 - a timeout: report, do not crash the bench
            code = None
        procs.stop(proc)
        status.install_s = time.monotonic() - t0
        if code != 0:
            why = "timed out" if code is None else f"pip exited {code}"
            status.reason = f"install failed ({why}): {tail(log, 3)}"
            return status
        if not _version_ok(status, procs, log):
            status.reason = (
                f"installed but `{spec.exe} --version` did not report {spec.version}: {tail(log.with_suffix('.version.log'), 3)}"
            )
            return status
        _marker(venv).write_text(json.dumps({"requirements": list(spec.requirements), "installed_s": round(status.install_s, 1)}))
        status.available = True
        return status

    return status, finish


def install_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def offline_env(hf_cache: Path | None = None) -> dict[str, str]:
    """Environment for peer runs: no hub access, no proxies for loopback, quiet progress bars."""
    env = install_env()
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    if hf_cache is not None:
        env["HF_HUB_CACHE"] = str(hf_cache)
    return env


def build_tokenizer(statuses: dict[str, PeerStatus], procs: Procs) -> tuple[Path | None, str]:
    """Build (or reuse) the local BPE tokenizer with an installed peer's Python.

    Returns (directory holding ``tok-bpe/`` and ``hf-cache/``, note) or (None, reason).
    """
    out = VENVS / "tokenizer"
    marker = out / ".fidelity-built.json"
    if marker.exists() and (out / "tok-bpe" / "tokenizer.json").exists():
        return out, json.loads(marker.read_text()).get("corpus", "?")
    for name in ("aiperf", "guidellm"):
        status = statuses.get(name)
        if status is None or not status.available:
            continue
        corpus: list[str] = []
        if name == "aiperf":
            found = sorted(status.venv.glob("lib/python*/site-packages/aiperf/dataset/generator/assets/shakespeare.txt"))
            corpus = [str(found[0])] if found else []
        out.mkdir(parents=True, exist_ok=True)
        log = VENVS / "tokenizer-build.log"
        log.unlink(missing_ok=True)
        code = procs.run(
            [str(status.python), str(HERE / "fidelity_tokenizer.py"), str(out), *corpus], log, timeout_s=600, env=offline_env()
        )
        if code == 0 and (out / "tok-bpe" / "tokenizer.json").exists():
            note = "aiperf shakespeare.txt" if corpus else f"stdlib sources ({name} venv)"
            marker.write_text(json.dumps({"corpus": note}))
            return out, note
        return None, f"tokenizer build failed: {tail(log, 3)}"
    return None, "no peer installed to build the tokenizer with"


# --------------------------------------------------------------------------- commands


def aiperf_argv(
    status: PeerStatus, tok: Path, url: str, model: str, isl: int, osl: int, c: int, n: int, warmup: int, out: Path
) -> list[str]:
    """The reference command (peer-clients.md section 4) for N requests at concurrency C."""
    argv = [
        str(status.exe),
        "profile",
        "--model",
        model,
        "--url",
        url,
        "--endpoint-type",
        "completions",
        "--streaming",
        "--tokenizer",
        "local/tok-bpe",
        "--use-server-token-count",
        "--synthetic-input-tokens-mean",
        str(isl),
        "--synthetic-input-tokens-stddev",
        "0",
        "--output-tokens-mean",
        str(osl),
        "--output-tokens-stddev",
        "0",
        "--extra-inputs",
        "ignore_eos:true",
        "--concurrency",
        str(c),
        "--request-count",
        str(n),
        "--ui-type",
        "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--random-seed",
        "0",
        "--artifact-dir",
        str(out),
    ]
    if warmup > 0:
        argv += ["--warmup-request-count", str(warmup)]
    return argv


def guidellm_argv(
    status: PeerStatus, tok: Path, url: str, model: str, isl: int, osl: int, c: int, n: int, warmup: int, out: Path
) -> list[str]:
    """The reference command (peer-clients.md section 5); warmup=K requests, count=N+K."""
    profile = f"kind=concurrent,streams={c}" + (f",warmup={warmup}" if warmup > 0 else "")
    return [
        str(status.exe),
        "run",
        "--backend",
        f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
        "--profile",
        profile,
        "--constraint",
        f"kind=max_requests,count={n + warmup}",
        "--tokenizer",
        f"kind=hf_auto,model={tok / 'tok-bpe'}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={isl},output_tokens={osl}",
        "--seed",
        "kind=static,value=0",
        "--output",
        f"kind=json,path={out / 'benchmarks.json'}",
        "--disable-console-interactive",
    ]


# --------------------------------------------------------------------------- parsing


@dataclass
class ClientSample:
    """One measured request as a client reported it (ms)."""

    key: str  # X-Request-Id, or sha1 of the prompt text
    ttft_ms: float
    itl_mean_ms: float | None
    gaps_ms: list[float] | None  # every inter-token gap, where the client reports them
    start_offset_s: float | None = None  # ours: dispatch time from the measured phase's start
    start_wall: float | None = None  # guidellm: time.time() of the request start
    send_mono: float | None = None  # rawsock: time.monotonic() just before sendall
    first_mono: float | None = None  # rawsock: time.monotonic() just after the first token's recv


def parse_ours(result_file: Path) -> tuple[list[ClientSample], int]:
    """scripts/benchmark_common.py result: per-request ttft_ms / itl_ms under "requests"."""
    data = json.loads(result_file.read_text())
    samples, failed = [], 0
    for rec in data.get("requests", []):
        if rec.get("warmup") or not rec.get("success"):
            failed += 0 if rec.get("warmup") else 1
            continue
        gaps = [float(g) for g in rec.get("itl_ms") or []]
        offset = rec.get("dispatch_offset_s", rec.get("start_offset_s"))
        samples.append(
            ClientSample(
                key=str(rec["x_request_id"]),
                ttft_ms=float(rec["ttft_ms"]),
                itl_mean_ms=sum(gaps) / len(gaps) if gaps else None,
                gaps_ms=gaps,
                start_offset_s=None if offset is None else float(offset),
            )
        )
    return samples, failed


def parse_aiperf(artifact_dir: Path) -> tuple[list[ClientSample], int]:
    """aiperf profile_export.jsonl: one record per request; keep the profiling phase."""
    samples, failed = [], 0
    with (artifact_dir / "profile_export.jsonl").open() as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            meta, metrics = rec.get("metadata", {}), rec.get("metrics", {})
            if meta.get("benchmark_phase") != "profiling":
                continue
            ttft = (metrics.get("time_to_first_token") or {}).get("value")
            if rec.get("error") or ttft is None or meta.get("was_cancelled"):
                failed += 1
                continue
            gaps = (metrics.get("inter_chunk_latency") or {}).get("value")
            itl = (metrics.get("inter_token_latency") or {}).get("value")
            samples.append(
                ClientSample(
                    key=str(meta.get("x_request_id")),
                    ttft_ms=float(ttft),
                    itl_mean_ms=None if itl is None else float(itl),
                    gaps_ms=[float(g) for g in gaps] if isinstance(gaps, list) else None,
                )
            )
    return samples, failed


def prompt_sha1(prompt: str) -> str:
    """Same fingerprint as the stand-in's trace field ``prompt_sha1``."""
    return hashlib.sha1(prompt.encode("utf-8", errors="surrogatepass")).hexdigest()


def parse_guidellm(out_dir: Path, warmup: int) -> tuple[list[ClientSample], int]:
    """guidellm benchmarks.json: measured successful requests, keyed by their prompt's sha1.

    guidellm 0.8.1 lists its warmup requests among ``requests.successful`` too,
    and its own cut between warmup and measurement moves with timing (its
    benchmark ``start_time`` kept 29 to 324 requests for N=25..256 here).  So
    the bench applies the rule the other clients follow: the first ``warmup``
    requests sent (by ``request_start_time``) are warmup, the rest are measured.
    """
    data = json.loads((out_dir / "benchmarks.json").read_text())
    rows: list[dict[str, Any]] = []
    failed = 0
    for bench in data.get("benchmarks", []):
        reqs = bench.get("requests", {})
        failed += len(reqs.get("errored") or []) + len(reqs.get("incomplete") or [])
        rows.extend(reqs.get("successful") or [])
    rows.sort(key=lambda r: float(r.get("request_start_time") or 0.0))
    samples = []
    for rec in rows[warmup:]:
        args = rec.get("request_args")
        args = json.loads(args) if isinstance(args, str) else (args or {})
        prompt = (args.get("body") or {}).get("prompt")
        ttft = rec.get("time_to_first_token_ms")
        if not isinstance(prompt, str) or ttft is None:
            failed += 1
            continue
        itl = rec.get("inter_token_latency_ms")
        samples.append(
            ClientSample(
                key=prompt_sha1(prompt),
                ttft_ms=float(ttft),
                itl_mean_ms=None if itl is None or (isinstance(itl, float) and math.isnan(itl)) else float(itl),
                gaps_ms=None,
                start_wall=rec.get("request_start_time"),
            )
        )
    return samples, failed


def parse_rawsock(out_file: Path) -> tuple[list[ClientSample], int]:
    """fidelity_rawclient.py output: absolute monotonic stamps per measured request."""
    data = json.loads(out_file.read_text())
    samples, failed = [], 0
    for rec in data.get("requests", []):
        tokens = rec.get("tokens") or []
        if rec.get("first") is None or not tokens:
            failed += 1
            continue
        gaps = [(b - a) * 1000 for a, b in zip(tokens, tokens[1:])]
        samples.append(
            ClientSample(
                key=str(rec["id"]),
                ttft_ms=(rec["first"] - rec["send"]) * 1000,
                itl_mean_ms=sum(gaps) / len(gaps) if gaps else None,
                gaps_ms=gaps,
                send_mono=float(rec["send"]),
                first_mono=float(rec["first"]),
            )
        )
    return samples, failed
