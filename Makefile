# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/metering: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/metering

.PHONY: demo test lint
demo: $(BIN)/metering
	$(BIN)/metering demo

test: $(BIN)/metering
	$(BIN)/pytest -n auto --durations=25

lint: $(BIN)/metering
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
