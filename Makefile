# `make train` and `make test` each create .venv when missing and install the project into it.
# Extra arguments pass through: make train ARGS="--data.data_dir /data --trainer.max_epochs 5"
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lvae-installed
ARGS ?=

.PHONY: train test test-fast bench install

install: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 is the known-good pair; installing it first keeps set-up fast where a
# local index holds it. pyproject only declares ranges, so a machine without that pair still installs.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || echo "known-good torch pair unavailable; pyproject ranges decide"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/lvae fit --config configs/mnist.yaml $(ARGS)

# Two workers, one test module each at a time (module-scoped fits are made once): most tests wait on one lvae
# process, so a second worker uses the second core. --no-loadscope-reorder hands the modules out in the order
# tests/conftest.py gives them (those that start processes first), not by their count of tests.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

# The in-process tests only (no lvae command started), to run after every change.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not command" $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/throughput.py $(ARGS)
