# mfhelm — `make help` lists the targets. `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Tests and helm calls find the pinned tools (helm, checkov, ...) in the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

STAMP := $(VENV)/.mfhelm-dev

.PHONY: help dev tools test test-unit test-chart test-bicep test-cluster test-kind lint bench \
        bicep-build bicep-whatif bicep-deploy clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml tools.toml tests/tools/install.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check "uv==$$($(PYTHON) tests/tools/install.py --version-of uv)"
	@$(BIN)/uv pip install --quiet --python $(PY) -e '.[test]'
	@$(PYTHON) tests/tools/install.py --bin-dir $(BIN)
	@touch $@

dev: $(STAMP) ## create .venv with mfhelm, the test deps and every pinned tool
	@echo "ready: source $(VENV)/bin/activate  (mfhelm, helm, checkov inside)"

tools: ## (re)link the pinned tools from tools.toml into .venv/bin
	@$(PYTHON) tests/tools/install.py --bin-dir $(BIN)

test: $(STAMP) ## run every test layer (unit, chart, bicep, cluster)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## unit tests only (fast)
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-chart: $(STAMP) ## render, lint, schema-validate and scan the chart
	@$(PY) -m pytest tests/chart $(PYTEST_ARGS)

test-bicep: $(STAMP) ## parse and scan the Bicep templates
	@$(PY) -m pytest tests/bicep $(PYTEST_ARGS)

test-cluster: $(STAMP) ## end-to-end tests on the local control plane (KWOK nodes)
	@$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

test-kind: $(STAMP) ## the same cluster tests on a kind cluster (needs Docker)
	@MFHELM_TEST_KIND=1 $(PY) -m pytest tests/cluster $(PYTEST_ARGS)

lint: $(STAMP) ## ruff over the tree, mypy over mfhelm/
	@$(BIN)/ruff check mfhelm tests
	@$(BIN)/mypy mfhelm

bench: $(STAMP) ## time `mfhelm --help` and `mfhelm render` (median of several runs)
	@$(PY) tests/bench/bench_cli.py $(BENCH_ARGS)

clean: ## remove the venv (the tool cache in ~/.cache/mfhelm stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- Azure infrastructure (bicep/): thin wrappers over `mfhelm deploy`. ---
bicep-build: $(STAMP) ## compile bicep/main.bicep (mfhelm deploy --build-only)
	@$(BIN)/mfhelm deploy --build-only $(DEPLOY_ARGS)

bicep-whatif: $(STAMP) ## preview the deployment (mfhelm deploy --what-if)
	@$(BIN)/mfhelm deploy --what-if $(DEPLOY_ARGS)

bicep-deploy: $(STAMP) ## preflight with `mfhelm doctor`, then deploy (mfhelm deploy)
	@$(BIN)/mfhelm deploy $(DEPLOY_ARGS)
