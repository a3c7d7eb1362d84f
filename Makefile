# The README's two commands: `make demo` (train on the bundled digits, write figures) and
# `make test`. Both create the virtual environment in $(VENV) when it is missing or older
# than pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test test-all lint clean

demo: $(VENV)/.installed
	$(BIN)/pyrovae train --out $(DEMO_OUT) --force
	@echo "figures: $(DEMO_OUT)/figures/"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check pyrovae tests examples benchmarks

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,tensorboard]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
