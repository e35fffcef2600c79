# Quickstart targets. Each one does its own set-up on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: serve test lint venv system-deps clean

serve: venv
	@echo "The HTTP service is not built yet (issue 3). Train and export a model with:"
	@echo "  $(BIN)/python -m training train --preset toy2d --steps 2000 --run-dir runs/toy2d"
	@echo "  $(BIN)/python -m training export --run-dir runs/toy2d --model-dir models --name grid25"
	@exit 2

test: venv system-deps
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check service training tests
	$(BIN)/ruff format --check service training tests
	$(BIN)/mypy

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,cpu,dev]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (nothing is downloaded at run time).
system-deps:
	@if [ ! -d $(FASHION_MNIST_DIR) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist" >&2; exit 1; fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
