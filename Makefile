# Two commands matter (see README): `make run` and `make test`. Both build the venv from
# nothing on first use. torch is pinned and installed first so that no later dependency
# range can pull a several-GB CUDA build; elsewhere, point TORCH_INDEX at the CPU wheels:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
CUSTOMER ?= C001

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed
# The Prefect flow lives in its own venv, as in a Prefect worker: Prefect pins its own
# FastAPI, which must not move the service's.
PREFECT_VENV ?= .venv-prefect
PREFECT_STAMP := $(PREFECT_VENV)/.installed

.PHONY: install run test test-fast test-prefect bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e '.[serve,report,test]' $(foreach p,$(PLUGINS),-e '$(p:/=)[test]')
	# pip byte-compiles what it installs, but not editable sources: without this, a shell
	# with PYTHONDONTWRITEBYTECODE=1 recompiles ~40 modules (~40 ms) on every CLI start.
	$(PY) -m compileall -q src $(addsuffix src,$(PLUGINS)) >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/loyaltylens run $(CUSTOMER)

# The whole suite, slow tests included. pytest exits 5 when it collects nothing.
# The HTML report is checked in headless Chromium: a Debian package (no PyPI route that
# works offline), installed once here.
test: $(STAMP) $(PREFECT_STAMP) chromium
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
	$(MAKE) test-prefect

$(PREFECT_STAMP): integrations/prefect/pyproject.toml Makefile
	test -x $(PREFECT_VENV)/bin/python || $(PYTHON) -m venv $(PREFECT_VENV)
	$(PREFECT_VENV)/bin/python -m pip install --quiet -e 'integrations/prefect[test]'
	touch $(PREFECT_STAMP)

# The flow in Prefect's test harness, driving this checkout's loyaltylens command.
test-prefect: $(STAMP) $(PREFECT_STAMP)
	LOYALTYLENS_COMMAND=$(abspath $(VENV))/bin/loyaltylens $(PREFECT_VENV)/bin/python -m pytest -q -p no:cacheprovider integrations/prefect/tests

chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(PREFECT_VENV) build *.egg-info src/*.egg-info plugins/*/src/*.egg-info integrations/*/src/*.egg-info
