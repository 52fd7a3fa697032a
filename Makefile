# One-command setup, the main job, tests and benchmarks. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SLURM := recipes/minislurm/minislurm.sh
RESULTS := results
export SLURM_CONF := $(CURDIR)/.minislurm/slurm.conf
export LHCCNN_LAUNCHER := mpirun
# mpirun refuses root unless told; CI and the container run as root
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# ranks that share cores: Open MPI's busy-polling would steal them from TensorFlow (bench: ~1.5x)
export OMPI_MCA_mpi_yield_when_idle := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# what `make container-test` runs inside the image (CI's budget: the whole suite runs natively)
CONTAINER_TESTS ?= tests/unit tests/notebooks/test_notebooks.py::test_01_cluster_startup \
                   tests/cluster/test_minislurm.py tests/cluster/test_horovod.py
# pip's output without its venv-location warnings; pip's own failure still fails the target (a
# reinstall that cannot reach PyPI must not leave the old environment stamped as current)
PIP_LOG = 2>&1 | { grep -v '^WARNING: Location' || true; } || { \
  echo "error: pip failed (its messages above); behind a TLS-intercepting proxy, set PIP_CERT to its CA bundle"; exit 1; }
# Horovod must build against TensorFlow, MPI and Gloo, and nothing else (DESIGN §3)
HOROVOD_FLAGS := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
                 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1

.PHONY: help all env peers-env system data slurm-start slurm-stop slurm-status train-batch notebooks book test test-unit lint bench container container-test clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

all: env data slurm-start notebooks book  ## the main job: set up, make data, start SLURM, run the 5 notebooks, build the book

system:  ## Debian packages (MPI, SLURM, munge, compiler), only those missing
	@recipes/minislurm/install.sh

env: system $(VENV)/.installed  ## the virtual environment with the pinned stack and Horovod

$(VENV)/.installed: constraints.txt pyproject.toml
	@echo "== environment: $(VENV) (first time: ~10 min, mostly building Horovod)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel $(PIP_LOG)
	@$(PIP) install -q -c constraints.txt -e '.[tf,cluster,widgets,dev]' $(PIP_LOG)
	@$(PY) -c 'import tensorflow, h5py, ipyparallel, mpi4py, bqplot, qgridnext, papermill, playwright' || { \
	  echo "error: the Python stack did not install (see pip's messages above)"; exit 1; }
	@$(VENV)/bin/horovodrun --check-build 2>/dev/null | grep -q '\[X\] TensorFlow' || { \
	  echo "== building Horovod with TensorFlow, MPI and Gloo (~5 min on 2 cores)"; \
	  $(HOROVOD_FLAGS) $(PIP) install -q --no-build-isolation -c constraints.txt horovod $(PIP_LOG); }
	@$(VENV)/bin/horovodrun --check-build > $(VENV)/horovod-build.txt
	@for need in TensorFlow MPI Gloo; do grep -q "\[X\] $$need" $(VENV)/horovod-build.txt || { \
	  cat $(VENV)/horovod-build.txt; echo "error: Horovod lacks $$need support; needs Debian libopenmpi-dev and cmake, then: rm -rf $(VENV) && make env"; exit 1; }; done
	@touch $@

peers-env: env $(VENV)/.peers  ## the [peers] extra (Ray Tune, Optuna) for the peer benchmark

$(VENV)/.peers: $(VENV)/.installed
	@$(PIP) install -q -c constraints.txt -e '.[peers]' $(PIP_LOG)
	@$(PY) -c 'import ray.tune, optuna' || { echo "error: the [peers] extra did not install"; exit 1; }
	@touch $@

data: env  ## the embedded synthetic dataset (skips files that already verify)
	@$(PY) data/fetch.py

slurm-start: system  ## start the mini SLURM cluster (munge, slurmctld, 4 slurmd)
	@$(SLURM) start

slurm-stop:  ## stop it; no daemon or job left behind
	@$(SLURM) stop

slurm-status:  ## sinfo and squeue
	@$(SLURM) status

train-batch: env data slurm-start  ## sbatch the Horovod recipe on 2 nodes, wait, print the metrics
	@mkdir -p $(RESULTS)
	@echo "== sbatch recipes/nersc/train_horovod.sbatch on 2 nodes (mini SLURM)"
	@export PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	  jid=$$(sbatch --parsable -N 2 --ntasks-per-node=1 -o $(RESULTS)/%x-%j.out recipes/nersc/train_horovod.sbatch $(TRAIN_ARGS)); \
	  echo "job $$jid submitted; log: $(RESULTS)/lhccnn-train-$$jid.out"; \
	  $(PY) -m lhccnn.cli wait-job $$jid --log $(RESULTS)/lhccnn-train-$$jid.out; \
	  $(PY) -m lhccnn.cli summary $(RESULTS)/train-$$jid

notebooks: env data slurm-start  ## execute the notebooks in order with papermill into book/notebooks (SMOKE=1: tiny sizes)
	@$(PY) -m lhccnn.cli notebooks --out book/notebooks $(if $(SMOKE),--smoke)

book: env  ## build the book (_config.yml, _toc.yml, book/) from the executed notebooks in book/notebooks
	@ls book/notebooks/0*.ipynb >/dev/null 2>&1 || { \
	  echo "error: no executed notebooks in book/notebooks: make all executes them there"; exit 1; }
	@$(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "book: $(CURDIR)/_build/html/index.html"

test: env peers-env data  ## the whole test suite (what CI runs); starts the mini SLURM, stops it if it was down
	@up=0; $(SLURM) status >/dev/null 2>&1 && up=1; $(SLURM) start; rc=0; \
	  $(PY) -m pytest -q -ra $(PYTEST_ARGS) || rc=$$?; [ $$up = 1 ] || $(SLURM) stop; exit $$rc

lint: env  ## ruff (lint, format check at 100 columns) and the import-linter layer contract; the unit tier runs them too
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

test-unit: env  ## the unit tier only: fast, no cluster
	@$(PY) -m pytest -q -ra tests/unit $(PYTEST_ARGS)

bench: env peers-env data slurm-start  ## benchmarks at full size (~80 min: PBT 19, peers 33, scale 14): tables, results/bench*.json
	@LHCCNN_BENCH=full $(PY) -m pytest -q -s tests/benchmarks $(PYTEST_ARGS)

container:  ## build the image from the Dockerfile with podman (no daemon; makes its debian:12 base if no registry has it)
	@recipes/minislurm/container.sh build

container-test: env container  ## the built image: its mini SLURM, srun, Horovod, the unit tier and notebook 01 inside; nothing left here
	@LHCCNN_CONTAINER=1 LHCCNN_CONTAINER_TESTS="$(CONTAINER_TESTS)" $(PY) -m pytest -q -ra -s tests/container $(PYTEST_ARGS)

clean: slurm-stop  ## stop SLURM, remove results and caches (keeps the environment and data)
	rm -rf $(RESULTS) .pytest_cache
