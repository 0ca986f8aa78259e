# The README's commands. Each target installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: run test lint demo bench schema-doc clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/runtap serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check proxy analytics tests scripts

test: lint
	$(BIN)/pytest

demo: $(TEST_STAMP)
	$(BIN)/runtap demo

bench: $(TEST_STAMP)
	$(BIN)/python scripts/bench.py

schema-doc: $(RUN_STAMP)
	$(BIN)/python scripts/schema_doc.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
