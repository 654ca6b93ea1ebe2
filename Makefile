# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# the project with exactly the pinned versions first (torch from the machine's local wheel store).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CORES ?= 2

.PHONY: install demo test lint clean-demo

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[workflow,test]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" snakemake --configfile configs/demo.yaml --cores $(CORES)

test: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# ruff (lint and format, configured in pyproject.toml) and Snakemake's own linter of the workflow
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint --configfile configs/demo.yaml

clean-demo:
	rm -rf results logs resources/demo_data .snakemake
