# recops: `make demo` sets up and runs the whole thing end to end; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_COMPILE_BYTECODE := 1
export UV_LINK_MODE := copy
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test test-fast bench clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python 3.11
	touch $@

setup: $(VENV)/.synced  ## create the virtualenv with uv (first use only)

demo: setup  ## generate data, run the pipeline through Prefect, serve, call the API, stop
	unset PYTHONDONTWRITEBYTECODE; $(VENV)/bin/recops demo

test: setup  ## lint (ruff), then every test: unit, integration, end-to-end, scale-out (PostgreSQL + Redis on 127.0.0.1)
	$(VENV)/bin/ruff check .
	unset PYTHONDONTWRITEBYTECODE; $(VENV)/bin/python -m pytest -q

test-fast: setup  ## lint and unit tests only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -m "not e2e and not scaleout"

bench: setup  ## benchmarks (print figures and a final JSON line each)
	$(VENV)/bin/python bench/pipeline.py
	$(VENV)/bin/python bench/serving.py
	$(VENV)/bin/python bench/realtime.py
	$(VENV)/bin/python bench/sessions.py
	$(VENV)/bin/python bench/experiments.py
	$(VENV)/bin/python bench/monitoring.py
	$(VENV)/bin/python bench/chaos.py

bench-quality: setup  ## recommendation quality vs popularity, implicit ALS / item-kNN and EASE
	$(UV) sync --frozen --extra dev --extra bench --python 3.11
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/python bench/quality.py
	rm -f $(VENV)/.synced  # the next `make test` re-syncs without the bench extra

clean:
	rm -rf .recops .recops-demo .pytest_cache
