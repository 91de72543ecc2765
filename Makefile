# sslvit — `make install` then `make test`. `make help` lists every target.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
BENCH_ARGS ?= --suite all --budget-s 480 --json outputs/bench/step.json
RESULTS_ARGS ?=

.PHONY: help install data test test-all lint format train bench results clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(BIN)/python data  ## create .venv, install sslvit (editable, dev extras) and the default dataset
	@echo "installed; next: make test"

$(BIN)/python: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(BIN)/python

data:  ## make Fashion-MNIST available (Debian's dataset-fashion-mnist package)
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing. On Debian/Ubuntu run: sudo apt-get install dataset-fashion-mnist"; \
		echo "elsewhere, put the four *-ubyte.gz files in a folder and pass data.root=<folder>"; \
	fi

test:  ## run the test suite (CPU, a few minutes)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not gpu and not slow"

test-all:  ## every test, the slow ones too (GPU tests skip without CUDA)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

lint:  ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format:  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train:  ## the default job: DINO, a 4-block ViT-tiny/7 on Fashion-MNIST (ARGS="key=value ..." to override)
	$(BIN)/python train.py $(ARGS)

bench:  ## pretraining-step benchmark table on a GPU (BENCH_ARGS="..." to change; see docs/benchmarks.md)
	$(BIN)/python -m benchmarks.step $(BENCH_ARGS)

results:  ## k-NN curves + table of benchmarks/results.yaml's recipes (RESULTS_ARGS="--tiny", "--from-runs DIR", ...)
	$(BIN)/python -m benchmarks.results $(RESULTS_ARGS)

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache .mypy_cache
