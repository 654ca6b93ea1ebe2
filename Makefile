# Entry points for a fresh machine: `make demo` (about 10 minutes on 2 cores, the install included),
# `make test` (unit tests and one end-to-end demo run, about 9 minutes on 2 cores) and
# `make test-all` (the complete suite, what CI runs: .ci/run). Each creates .venv and installs the
# project with exactly the pinned versions first (torch from the machine's local wheel store).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CORES ?= 2
# Extra pytest options, e.g. make test PYTEST_ARGS="--durations=20"
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint clean-demo

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[workflow,bioimageio,test]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" snakemake --configfile configs/demo.yaml --cores $(CORES)

# The unit tests and the one demo run marked `demo` (pyproject.toml's markers); no SLURM cluster, no
# kill-and-rerun runs.
test: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow or demo" $(PYTEST_ARGS)

# Every test, slow and SLURM ones included.
test-all: $(INSTALLED)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

# ruff (lint and format, configured in pyproject.toml) and Snakemake's own linter of the workflow
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint --configfile configs/demo.yaml

clean-demo:
	rm -rf results logs resources/demo_data .snakemake
