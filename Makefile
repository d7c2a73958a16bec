# The two set-up commands of the README. Each creates .venv when missing and installs the project into it.
#   make demo   run the quickstart sweep on the local executor and print its summary table
#   make test   start the SLURM test cluster, lint, and run the whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sfhpc-installed

.PHONY: demo test lint bench cluster-start cluster-stop

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 \
		| grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import sfhpc.cli, torch, pyautoattack" && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sfhpc sweep launch sweeps/quickstart.yaml --executor local
	$(BIN)/sfhpc aggregate runs/quickstart

# The cluster script decides for itself whether it can start; the tests that need it skip with the reason
# (or, with CI=true, fail).
test: $(STAMP)
	-bash slurm_templates/testcluster.sh start
	$(BIN)/ruff check sfhpc tests benchmarks
	$(BIN)/python -m pytest -ra --durations=10

lint: $(STAMP)
	$(BIN)/ruff check sfhpc tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/expand_scale.py

cluster-start:
	bash slurm_templates/testcluster.sh start

cluster-stop:
	bash slurm_templates/testcluster.sh stop
