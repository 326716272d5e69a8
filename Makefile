# The entry points. `make test` and `make dev` install what they need first (scripts/setup.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SAM := .venv-sam/bin/sam
export SAM_CLI_TELEMETRY := 0
# `sam build` needs the runtime's python3.12 on PATH: our venv's interpreter is 3.12 where one exists.
SAM_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install install-dev test lint typecheck validate unit integration e2e contract dev bench build deploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install Java, DynamoDB Local, Chromium and the virtual environments (idempotent)
	@bash scripts/setup.sh --browser

install-dev:  ## install only what make dev and make bench run on (no SAM CLI, no browser)
	@bash scripts/setup.sh --dev

test: install  ## everything CI runs: lint, types, template, unit, integration and browser tests
	@$(MAKE) --no-print-directory lint typecheck validate
	$(PY) -m pytest tests

lint:  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:  ## mypy
	$(VENV)/bin/mypy

validate:  ## sam validate --lint
	$(SAM) validate --lint

unit: install  ## the fast tests (moto)
	$(PY) -m pytest tests/unit

integration: install  ## the tests on DynamoDB Local
	$(PY) -m pytest tests/integration

e2e: install  ## the browser tests against the local stack
	$(PY) -m pytest tests/e2e

contract: install  ## the HTTP API fuzzed against docs/openapi.yaml (Schemathesis; CONTRACT_SEED=, CONTRACT_EXAMPLES=)
	$(PY) -m pytest tests/integration/test_contract.py

dev: install-dev  ## the whole product offline: DynamoDB Local, API, Stripe emulator and the page
	PYTHONPATH=shared $(PY) -m local.dev $(ARGS)

bench: install-dev  ## contention benchmark on DynamoDB Local
	$(PY) -m benchmarks.contention

build: install  ## sam build (arm64 layer and functions)
	PATH="$(SAM_PATH)" $(SAM) build

deploy: build  ## sam deploy (see samconfig.toml and the README)
	$(SAM) deploy

clean:  ## remove build output and virtual environments (keeps local data)
	rm -rf .aws-sam $(VENV) .venv-sam node_modules artifacts
