# Two commands on a fresh machine (Python >= 3.11 and make): `make run`, `make test`.
PYTHON ?= python3
UV_VERSION := >=0.13,<0.14
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
# Compile bytecode at install: where the tree is read-only (an image) nothing would be
# written, and every start would pay ~2.5 s of compiling.
export UV_COMPILE_BYTECODE := 1

.PHONY: install run test test-tools lint format bench openapi clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check 'uv$(UV_VERSION)'

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	touch $@

install: $(VENV)/.synced  ## create or refresh the environment from uv.lock

# scripts/run_local.py: migrate, seed the demo tenant, start a local MongoDB (secantusdb, data
# in ./data/mongo, port BERTH_LOCAL_MONGO_PORT or 27018) unless BERTH_MONGO__URL is set, serve;
# the MongoDB server stops with the service.
run: install  ## migrate, seed the demo tenant, serve on http://127.0.0.1:8000 (no servers)
	$(PY) scripts/run_local.py

test: install test-tools  ## the whole suite (real PostgreSQL, Redis, a Kubernetes API server)
	$(PY) -m pytest $(PYTEST_ARGS)

test-tools:  ## etcd (for the test Kubernetes API server) and friends, with apt-get if missing
	@scripts/install-test-tools

lint: install  ## ruff format + lint, mypy --strict
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install  ## wrk benchmark, side by side (see docs/benchmarks.md)
	$(PY) -m tests.bench.run $(BENCH_ARGS)

openapi: install
	$(PY) -m service openapi -o openapi.json

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
