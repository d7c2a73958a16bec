# The two set-up commands of the README. Each creates .venv when missing and installs the project into it.
#   make demo   run the quickstart sweep on the local executor and print its summary table
#   make test   start the SLURM test cluster (and install chromium if missing), lint, type-check, and run the
#               whole test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sfhpc-installed

.PHONY: demo test lint bench brainscore-env cluster-start cluster-stop

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 \
		| grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import sfhpc.cli, torch, pyautoattack" && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sfhpc sweep launch sweeps/quickstart.yaml --executor local --parallel 2
	$(BIN)/sfhpc aggregate runs/quickstart

# The cluster script decides for itself whether it can start; the tests that need it skip with the reason
# (or, with CI=true, fail).
test: $(STAMP)
	-bash slurm_templates/testcluster.sh start
	@command -v chromium >/dev/null || { echo "installing chromium (report.html's browser tests)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > $(VENV)/chromium-install.log 2>&1 \
		|| echo "could not install chromium (see $(VENV)/chromium-install.log)"; }
	$(BIN)/ruff check sfhpc tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -ra --durations=10

lint: $(STAMP)
	$(BIN)/ruff check sfhpc tests benchmarks
	$(BIN)/mypy

# The benchmarks' own environment (benchmarks/.venv): hydra-submitit-launcher and pandas, what users would pick
# instead; the project depends on neither. Scripts skip their comparison when it is missing; gpu_calibrate.py says
# so and exits 0 without a GPU; the one that needs the SLURM test cluster runs last and skips with the reason when
# the cluster is not running.
BENCH_VENV := benchmarks/.venv
bench: $(STAMP)
	-@test -f $(BENCH_VENV)/.installed || { test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV); \
		$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check hydra-core==1.3.8 \
		hydra-submitit-launcher==1.2.0 submitit h5py pandas 2>&1 | grep -v "^WARNING: Location"; \
		$(BENCH_VENV)/bin/python -c "import hydra_plugins.hydra_submitit_launcher, pandas, h5py" \
		&& touch $(BENCH_VENV)/.installed; }
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/expand_scale.py
	$(BIN)/python benchmarks/aggregate_scale.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/attack_shards.py
	$(BIN)/python benchmarks/attack_shards.py --image-size 64 --width 16
	$(BIN)/python benchmarks/attack_grid.py
	$(BIN)/python benchmarks/gpu_calibrate.py
	$(BIN)/python benchmarks/local_start.py
	$(BIN)/python benchmarks/launch_scale.py

# Brain-Score's own environment (.venv-brainscore), apart from .venv: brainscore-vision pins numpy 1.26 and pulls
# jupyter. tests/test_brainscore_export.py registers an exported plugin in it and runs the plugin's test.py there; it
# skips, saying so, while the environment is missing. Installing took 5 minutes on a 2-core machine from a local
# package mirror (6.5 GB with CUDA torch).
BS_VENV := .venv-brainscore
BS_STAMP := $(BS_VENV)/.installed
brainscore-env: $(BS_STAMP)
$(BS_STAMP):
	@test -x $(BS_VENV)/bin/python || $(PYTHON) -m venv $(BS_VENV)
	$(BS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check brainscore-vision==2.4.2 pytest 2>&1 \
		| grep -v "^WARNING: Location" || true
	@$(BS_VENV)/bin/python -W ignore -c "import brainscore_vision, torch, pytest" && touch $(BS_STAMP)

cluster-start:
	bash slurm_templates/testcluster.sh start

cluster-stop:
	bash slurm_templates/testcluster.sh stop
