PYTHON ?= python3
VENV := .venv

.PHONY: setup demo test lint browser

# Create .venv and install the package with its test tools (re-run when pyproject.toml changes).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
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

test: lint browser
	$(VENV)/bin/python -m pytest -q
