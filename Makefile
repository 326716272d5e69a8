# The entry points. `make test` and `make dev` install what they need first (scripts/setup.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
SAM := .venv-sam/bin/sam
export SAM_CLI_TELEMETRY := 0
# `sam build` needs the runtime's python3.12 on PATH: our venv's interpreter is 3.12 where one exists.
SAM_PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# make simulate: the simulator's seed and how many operations it runs
SEED ?= 1
OPS ?= 1000000

.PHONY: help install install-dev test check lint typecheck complexity validate unit integration e2e contract simulate dev bench build deploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install Java, DynamoDB Local, Chromium and the virtual environments (idempotent)
	@bash scripts/setup.sh --browser

install-dev:  ## install only what make dev and make bench run on (no SAM CLI, no browser)
	@bash scripts/setup.sh --dev

test: install  ## everything CI runs: lint, types, complexity, template, and every test (slow ones too)
	@$(MAKE) --no-print-directory lint typecheck complexity validate
	$(PY) -m pytest tests

check:  ## the quick loop: lint, types, complexity, unit, rule and simulation tests not marked slow
	@$(MAKE) --no-print-directory lint typecheck complexity
	$(PY) -m pytest -q -m "not slow" tests/unit $(wildcard tests/simulation)

lint:  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:  ## mypy
	$(VENV)/bin/mypy

# radon exits 0 whatever it finds: what it prints (a function ranked D or worse, a file it cannot
# parse) is the failure. The layout test needs no fixture nor plugin: without them it starts in a
# tenth of the time.
complexity:  ## radon (no function of rank D or worse) and module and class sizes (tests/unit/test_layout.py)
	@found="$$($(PY) -m radon cc -s -n D shared/credits local)" || exit 1; \
	if [[ -n "$$found" ]]; then \
		echo "$$found"; \
		echo "complexity: the functions above are ranked D or worse by radon (cyclomatic complexity over 20); split them" >&2; \
		exit 1; \
	fi
	PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PY) -m pytest -q --noconftest -p no:cacheprovider tests/unit/test_layout.py

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

simulate:  ## the ledger simulated at length (SEED=1 OPS=1000000)
	$(PY) -m tests.simulation --seed $(SEED) --ops $(OPS)

dev: install-dev  ## the whole product offline: DynamoDB Local, API, Stripe emulator and the page
	PYTHONPATH=shared $(PY) -m local.dev $(ARGS)

bench: install-dev  ## contention and cold-start benchmark on DynamoDB Local (ARGS=--profile: ours broken down)
	$(PY) -m benchmarks.contention $(ARGS)

build: install  ## sam build (arm64 layer and functions)
	PATH="$(SAM_PATH)" $(SAM) build

deploy: build  ## sam deploy (see samconfig.toml and the README)
	$(SAM) deploy

clean:  ## remove build output and virtual environments (keeps local data)
	rm -rf .aws-sam $(VENV) .venv-sam node_modules artifacts
