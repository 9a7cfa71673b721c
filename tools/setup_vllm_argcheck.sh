#!/usr/bin/env bash
# A CPU-only venv in which vLLM's own `serve` parser can be built, for tools/vllm_argcheck.py.
#
#   tools/setup_vllm_argcheck.sh VERSION VENV        (VERSION: the plans' vllm_version, e.g. 0.15.1)
#
# The GPU wheel of vLLM is installed without its dependencies (no CUDA torch, no flashinfer,
# no ray); torch is the CPU build from the local wheel folder (TORCH_FIND_LINKS, default
# /opt/wheels), and only what the parser's import path needs is added. Nothing here can serve
# a model: the venv answers "would `vllm serve` accept these flags?" and nothing else.
set -euo pipefail
VERSION=${1:?usage: setup_vllm_argcheck.sh VERSION VENV}
VENV=${2:?usage: setup_vllm_argcheck.sh VERSION VENV}
PYTHON=${PYTHON:-python3}
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}
FIND_LINKS=()
[ -d "$TORCH_FIND_LINKS" ] && FIND_LINKS=(--find-links "$TORCH_FIND_LINKS")

case "$VERSION" in
  0.15.*)
    DEPS=(numpy packaging regex pyyaml 'pydantic>=2.12.0' psutil cbor2 'transformers>=4.56.0,<5' gguf
          'aiohttp>=3.13.3' 'pyzmq>=25.0.0' msgspec cloudpickle pillow pybase64 cachetools py-cpuinfo
          'openai>=1.99.1' 'openai-harmony>=0.0.3' partial-json-parser 'prometheus_client>=0.18.0') ;;
  *)
    echo "setup_vllm_argcheck.sh: no dependency list for vLLM $VERSION yet (start from the wheel's Requires-Dist;" \
         "add what tools/vllm_argcheck.py --version reports as missing)" >&2
    exit 2 ;;
esac

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" --quiet --disable-pip-version-check)
"${PIP[@]}" install --no-deps "vllm==$VERSION"
"${PIP[@]}" install "${FIND_LINKS[@]}" "torch==2.13.0+cpu"
"${PIP[@]}" install "${FIND_LINKS[@]}" "${DEPS[@]}" "torch==2.13.0+cpu"
"$VENV/bin/python" -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__'
"$VENV/bin/python" "$(dirname "$0")/vllm_argcheck.py" --version
