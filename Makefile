# gpuadmit: every target creates what it needs (virtualenv, Debian packages) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test bench e2e chart chaos decide-example lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: the whole system on an embedded, emulated cluster (no cluster, no network needed)
demo: $(STAMP)
	$(BIN)/gpuadmit demo

## lint: the import contracts (import-linter, [tool.importlinter] in pyproject.toml), ruff and mypy on the package
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check operator
	$(BIN)/mypy

## test: lint, then every test suite (unit, property, emulator, end-to-end, Prometheus, Helm)
test: lint
	bash scripts/ensure-test-tools.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## bench: engine and end-to-end figures, printed
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

## e2e: the end-to-end suite; set GPUADMIT_E2E_KUBECONFIG to run it against a real cluster
e2e: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m e2e $(PYTEST_ARGS)

## chart: render the Helm chart to out/chart for people to read
chart: $(STAMP)
	$(BIN)/python -m tools.render_chart charts/gpuadmit out/chart

## chaos: the reliability suite at full size; prints workloads driven, faults by kind, restarts, malformed inputs, violations
chaos: $(STAMP)
	$(BIN)/python -m tests.reliability.chaos $(CHAOS)

## decide-example: what the default policy would do with the example cluster
decide-example: $(STAMP)
	$(BIN)/gpuadmit decide -f examples/cluster.yaml

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis .mypy_cache .ruff_cache .import_linter_cache
