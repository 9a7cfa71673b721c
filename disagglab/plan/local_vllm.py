"""Real vLLM on this machine: `engine: vllm` with `executor: local`.

The plans describe GPU nodes (a Qwen model, a venv under /opt/dlami, NIXL over CUDA-aware
UCX). On this machine the same task definitions run against the CPU build of vLLM and a tiny
locally built model. Everything that differs lives in the `local_vllm:` configuration section
and is applied here, only when the executor is local and the engine is vllm:

- the plan's `infrastructure.model` and `venv_path` are replaced (the plan file never is);
- `kv_transfer_config` is merged into each NixlConnector `--kv-transfer-config` JSON
  (`kv_buffer_device: cpu` is what makes NIXL register host memory);
- `transport_env` is merged over `transports.<backend>.env` (UCX on TCP over loopback);
- `env` and the per-role `omp_threads_bind` go into each server's environment.

The templates render these through the same argv and env lists as on AWS, so a server's
`serve ...` arguments are still exactly what the templates say, and with this section
inactive the rendered tasks are byte for byte what they were without it. Each result records
the section (with the resolved paths and the model's digest) under `provenance.local_vllm`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from disagglab.paths import ROOT

EFA_SYSFS = Path("/sys/class/infiniband")


def active(cfg: dict[str, Any]) -> bool:
    return cfg["engine"] == "vllm" and cfg["executor"] == "local"


def resolve(path: str, root: Path = ROOT) -> str:
    """A configured path as an absolute path; relative paths are relative to the project root."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The local_vllm section with absolute paths (what the renderer and the result use)."""
    section = copy.deepcopy(cfg["local_vllm"])
    section["venv_path"] = resolve(section["venv_path"])
    section["model"] = resolve(section["model"])
    return section


def effective_spec(cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The pattern spec the servers really get: the plan's, with model and venv replaced locally."""
    if not active(cfg):
        return spec
    local = settings(cfg)
    infra = {**spec["infrastructure"], "model": local["model"], "venv_path": local["venv_path"]}
    return {**spec, "infrastructure": infra}


def render_context(cfg: dict[str, Any], backend: str) -> dict[str, Any]:
    """Extra template values. Empty when inactive, so tasks render exactly as before."""
    transport = copy.deepcopy(cfg["transports"].get(backend, {"nixl_backends": [], "env": {}}))
    if not active(cfg):
        return {"transport": transport, "kv_transfer_extra": {}, "server_env": {"unified": {}, "producer": {}, "consumer": {}}}
    local = settings(cfg)
    transport["env"] = {**transport.get("env", {}), **local["transport_env"].get(backend, {})}
    server_env = {
        role: {**local["env"], **({"VLLM_CPU_OMP_THREADS_BIND": str(local["omp_threads_bind"][role])} if role in local["omp_threads_bind"] else {})}
        for role in ("unified", "producer", "consumer")
    }
    return {"transport": transport, "kv_transfer_extra": local["kv_transfer_config"], "server_env": server_env}


def refusal(cfg: dict[str, Any], backend: str) -> str | None:
    """Why this machine cannot run a pattern of this backend with real vLLM, or None."""
    if not active(cfg):
        return None
    if backend == "efa" and not any(EFA_SYSFS.glob("efa*")):
        return (f"efa pattern refused: engine vllm with executor local needs an EFA device and this machine has none "
                f"(nothing matches {EFA_SYSFS}/efa*); NIXL's LIBFABRIC backend would not measure EFA here")
    local = settings(cfg)
    vllm = Path(local["venv_path"]) / "bin" / "vllm"
    if not vllm.exists():
        return f"{vllm} does not exist: build the local vLLM-CPU environment with `make vllm-cpu` (local_vllm.venv_path)"
    if not (Path(local["model"]) / "config.json").exists():
        return f"no model at {local['model']}: build it with `make vllm-cpu` (local_vllm.model)"
    return None


def runner_python(cfg: dict[str, Any]) -> str | None:
    """The python that runs node-side files locally: the vLLM venv's, as on a real node."""
    return str(Path(settings(cfg)["venv_path"]) / "bin" / "python") if active(cfg) else None


def provenance(cfg: dict[str, Any], plan_model: str) -> dict[str, Any] | None:
    """What the result records about the local engine: the section, resolved, and what it replaced."""
    if not active(cfg):
        return None
    local = settings(cfg)
    manifest_path = Path(local["model"]) / "MANIFEST.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = None
    return {**local, "replaces_model": plan_model, "model_manifest": manifest, "vllm_distribution": _vllm_version(local["venv_path"])}


def _vllm_version(venv: str) -> str | None:
    """The installed vllm-cpu version, read from its dist-info (no import of vLLM)."""
    for meta in sorted(Path(venv).glob("lib/python*/site-packages/vllm_cpu-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return "vllm-cpu " + line.split(":", 1)[1].strip()
    return None
