# HelixTrain: `make demo` trains a small model with plans from the planner service and compares the strategies; `make test` runs the test suite.
# Both create .venv and install what they need (torch pinned to the CPU build on this machine's disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint schema install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e '.[service,executor,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m executor.train.demo --out out/demo

test: $(STAMP)
	$(PY) -m ruff check proto planner_service executor tests bench
	$(PY) -m pytest -q

# The edit-test loop: everything but the slow and multi-process tests (`make test` and CI still run all).
test-fast: $(STAMP)
	$(PY) -m ruff check proto planner_service executor tests bench
	$(PY) -m pytest -q -m "not slow and not distributed"

lint: $(STAMP)
	$(PY) -m ruff check proto planner_service executor tests bench
	$(PY) -m mypy proto planner_service executor
	$(PY) -m mypy

schema: $(STAMP)
	$(PY) -m proto.schema_gen

clean:
	rm -rf $(VENV) out .pytest_cache
