# comfyc — the two commands a fresh machine needs: `make test` and `make demo`.
# Both create .venv if missing and install pinned versions from constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Re-install when the pins or the package metadata change.
STAMP  := $(VENV)/.stamp-$(shell cat constraints.txt pyproject.toml setup.py 2>/dev/null | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo lint clean bench chromium wheel-check

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) constraints.txt pyproject.toml setup.py
	@echo "==> installing comfyc[compiler,cpu,serve,web,bench,dev,openvino] with pinned versions (constraints.txt)"
	@# torchsde, torchdiffeq, tqdm: what k-diffusion's sampling module (a test oracle) uses.
	@# NOTE: setuptools tells every editable install with a package_dir mapping to "be careful
	@# with folders in your working directory with the same name as your package". comfyc has
	@# none (the package's root is pkg/, issue #14), so that notice is silenced (issue #18).
	PYTHONWARNINGS="ignore::Warning:setuptools.command.editable_wheel" \
	  $(PIP) install --quiet -c constraints.txt -e '.[compiler,cpu,serve,web,bench,dev,openvino]' \
	  torchsde torchdiffeq tqdm
	@# Test oracles that install only without their declared dependencies, which would pull a
	@# CUDA torch (../shared/reference/spikes.md §2): k-diffusion and spandrel (torchvision).
	@# NOTE: this --no-deps step comes last. pip checks the whole environment after every
	@# install that resolves dependencies, so any later such install would print a resolver
	@# "ERROR" about k-diffusion's undeclared requirements (accelerate, clean-fid, wandb ...).
	$(PIP) install --quiet -c constraints.txt --no-deps k-diffusion spandrel einops
	@rm -f $(VENV)/.stamp-*
	@touch $@

install: $(STAMP)

# The browser the graph-page acceptance test renders with (Debian's chromium; needs root and
# apt). Without it that one test is skipped, saying why.
chromium:
	@command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "==> chromium could not be installed: the graph-page browser test will be skipped"

test: $(STAMP) chromium
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

# The unit tier (about a minute on 2 cores): no end-to-end compiles, no server, no browser.
test-fast: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n 2 -m "not slow" \
	  tests/compiler tests/frontends tests/runtime tests/test_layout.py $(PYTEST_ARGS)

# ruff (rules in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(PY) -m ruff check .

# The installs users do, in fresh venvs (pip's cache is reused): the wheel with [cpu] only
# runs an artifact where `import torch` fails, and a regular (non-editable) install with
# [compiler,cpu,bench] benchmarks from the repository root. CI runs it after the tests.
wheel-check: $(STAMP)
	.ci/wheel_check $(PY)

demo: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/comfyc demo

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-out
