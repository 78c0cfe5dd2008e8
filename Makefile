# mfhelm — `make help` lists the targets. `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Tests and helm calls find the pinned tools (helm, checkov, ...) in the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help dev tools test test-unit test-chart test-bicep test-cluster test-kind lint bench \
        bicep-build bicep-whatif bicep-deploy clean
.PHONY: test-tools chart-push

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Two stamps: `make dev` gives a user the tool (mfhelm, its runtime deps and
# the pinned helm) and nothing else; `make test-tools` (which every test
# target depends on) adds the test deps and builds the rest of tools.toml
# (the control plane, etcd, KWOK, Argo, checkov, Airflow, Azurite, ...).
STAMP      := $(VENV)/.mfhelm-dev
TEST_STAMP := $(VENV)/.mfhelm-test
# The tools `make dev` installs: what the mfhelm CLI itself runs (kind: for
# `mfhelm up`, which also needs Docker).
DEV_TOOLS  := helm kind
# uv installs no .pyc files, and with PYTHONDONTWRITEBYTECODE set (as in CI)
# Python would compile the Kubernetes client's sources on every run: a second
# or two of each `mfhelm install`. Compiled once here instead (files that are
# not Python, such as the chart's templated airflow_local_settings.py, fail
# to compile and are skipped).
COMPILE_BYTECODE = $(PY) -m compileall -q -j 0 $(VENV)/lib mfhelm >/dev/null 2>&1 || true

$(STAMP): pyproject.toml tools.toml tests/tools/install.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check "uv==$$($(PYTHON) tests/tools/install.py --version-of uv)"
	@$(BIN)/uv pip install --quiet --python $(PY) -e .
	@$(PYTHON) tests/tools/install.py --bin-dir $(BIN) --only $(DEV_TOOLS)
	@$(COMPILE_BYTECODE)
	@touch $@

$(TEST_STAMP): $(STAMP)
	@$(BIN)/uv pip install --quiet --python $(PY) -e '.[test]'
	@$(PYTHON) tests/tools/install.py --bin-dir $(BIN)
	@$(COMPILE_BYTECODE)
	@touch $@

dev: $(STAMP) ## create .venv with mfhelm, the pinned helm and kind (what a user needs)
	@echo "ready: source $(VENV)/bin/activate  (mfhelm, helm and kind inside)"

test-tools: $(TEST_STAMP) ## add the test deps and build every pinned test tool (cached)
	@echo "test tools ready in $(BIN) (built into $${MFHELM_CACHE:-~/.cache/mfhelm})"

tools: ## (re)link the pinned tools from tools.toml into .venv/bin
	@$(PYTHON) tests/tools/install.py --bin-dir $(BIN)

test: $(TEST_STAMP) ## run every test layer (unit, chart, bicep, cluster)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(TEST_STAMP) ## unit tests only (fast)
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-chart: $(TEST_STAMP) ## render, lint, schema-validate and scan the chart
	@$(PY) -m pytest tests/chart $(PYTEST_ARGS)

test-bicep: $(TEST_STAMP) ## parse and scan the Bicep templates
	@$(PY) -m pytest tests/bicep $(PYTEST_ARGS)

test-cluster: $(TEST_STAMP) ## end-to-end tests on the local control plane (KWOK nodes)
	@$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

test-kind: $(TEST_STAMP) ## the same cluster tests on a kind cluster (needs Docker)
	@MFHELM_TEST_KIND=1 $(PY) -m pytest tests/cluster $(PYTEST_ARGS)

lint: $(TEST_STAMP) ## ruff over the tree, mypy over mfhelm/
	@$(BIN)/ruff check mfhelm tests
	@$(BIN)/mypy mfhelm

bench: $(TEST_STAMP) ## time `mfhelm --help`, `mfhelm render`, install and `mfhelm verify` (medians)
	@$(PY) tests/bench/bench_cli.py $(BENCH_ARGS)

# `make chart-push REGISTRY=registry.example.com/charts`: helm package + helm
# push to oci://$(REGISTRY)/metaflow (log in first: helm registry login HOST).
# The subchart archives are fetched from their chart repositories (argo-helm,
# Airflow's); where those are unreachable the push stops, unless
# SUBCHARTS=drop pushes the chart without them as <version>-nosubcharts.
chart-push: $(STAMP) ## package the chart and push it to oci://$(REGISTRY) (PLAIN_HTTP=1, SUBCHARTS=drop)
	@test -n "$(REGISTRY)" || { echo "usage: make chart-push REGISTRY=HOST[:PORT][/PATH] [PLAIN_HTTP=1] [SUBCHARTS=drop]" >&2; exit 2; }
	@$(PY) -m mfhelm.oci push '$(REGISTRY)' --chart charts/metaflow $(if $(PLAIN_HTTP),--plain-http) $(if $(filter drop,$(SUBCHARTS)),--drop-subcharts)

clean: ## remove the venv (the tool cache in ~/.cache/mfhelm stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- Azure infrastructure (bicep/): thin wrappers over `mfhelm deploy`. ---
bicep-build: $(STAMP) ## compile bicep/main.bicep (mfhelm deploy --build-only)
	@$(BIN)/mfhelm deploy --build-only $(DEPLOY_ARGS)

bicep-whatif: $(STAMP) ## preview the deployment (mfhelm deploy --what-if)
	@$(BIN)/mfhelm deploy --what-if $(DEPLOY_ARGS)

bicep-deploy: $(STAMP) ## preflight with `mfhelm doctor`, then deploy (mfhelm deploy)
	@$(BIN)/mfhelm deploy $(DEPLOY_ARGS)
