# Developer verbs for eve_lightning. `make help` lists them.
#
# The first `make test` (or `make install`) creates .venv and installs the package with its dev extra.
# By default it installs the CPU build of torch pinned below, so no step pulls a multi-GB CUDA build.
# GPU users: `make install TORCH_SPEC="torch==2.5.1 --index-url <your index>"` chooses another torch,
# `make install TORCH_SPEC= VENV_FLAGS=--system-site-packages` keeps the torch already on the machine.
# `make test` and `make test-fast` run the suite in TEST_WORKERS parallel processes (pytest-xdist, default 2: the
# full suite takes about 5 minutes on 2 cores instead of 9); each worker gets an equal share of the cores for torch's
# threads (tests/conftest.py). `make test TEST_WORKERS=0` runs it in one process (no xdist: for --pdb, or to read
# one test's output in order); TEST_WORKERS=auto uses one worker per core. PYTEST_ARGS are passed on to pytest.

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
TRAIN_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install test test-fast test-gpu lint format train clean

help:  ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then echo "installing $(TORCH_SPEC)"; $(BIN)/python -m pip install -q $(TORCH_SPEC); fi
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install eve_lightning (+ dev tools)

test: $(STAMP)  ## run the CPU test suite (GPU tests skip themselves)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the edit loop: CPU tests without the slow and browser ones (under 2 minutes on 2 cores)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not browser and not gpu" $(PYTEST_ARGS)

test-gpu: $(STAMP)  ## run only the GPU tests (on a machine with CUDA)
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

train: $(STAMP)  ## demo recipe on CPU: prealign -> pretrain -> sft, then its held-out score (~10 min on 2 cores)
	$(BIN)/python -m eve_lightning.train +stage=prealign publish=true $(TRAIN_ARGS)
	$(BIN)/python -m eve_lightning.train +stage=pretrain init_from=runs/demo/prealign publish=true $(TRAIN_ARGS)
	$(BIN)/python -m eve_lightning.train +stage=sft init_from=runs/demo/pretrain publish=true $(TRAIN_ARGS)
	$(BIN)/python -m eve_lightning.eval benchmark=demo progress=false \
	  output_dir=logs/eval/make-train/$$(date +%Y-%m-%d_%H-%M-%S) > /dev/null
	@echo "demo model: runs/demo/latest (chance: colour 16.7 %, shape 25 %)"

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
