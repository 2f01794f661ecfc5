# comfyc — the two commands a fresh machine needs: `make test` and `make demo`.
# Both create .venv if missing and install pinned versions from constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Re-install when the pins or the package metadata change.
STAMP  := $(VENV)/.stamp-$(shell cat constraints.txt pyproject.toml setup.py 2>/dev/null | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo lint clean bench chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) constraints.txt pyproject.toml setup.py
	@echo "==> installing comfyc[compiler,cpu,serve,bench,dev] with pinned versions (constraints.txt)"
	$(PIP) install --quiet -c constraints.txt -e '.[compiler,cpu,serve,bench,dev]'
	@# Test oracles: k-diffusion's sampling module only installs without its dependencies
	@# (it would pull a CUDA torch); see ../shared/reference/spikes.md §2.
	$(PIP) install --quiet -c constraints.txt --no-deps k-diffusion
	$(PIP) install --quiet -c constraints.txt torchsde torchdiffeq tqdm
	@# spandrel (the upscale-model oracle) declares torchvision, which would pull a CUDA torch.
	$(PIP) install --quiet -c constraints.txt --no-deps spandrel einops
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

demo: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/comfyc demo

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-out
