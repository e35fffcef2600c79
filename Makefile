# Quickstart targets. Each one does its own set-up on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: serve test lint venv system-deps clean

# Serves the bundled models/ on http://127.0.0.1:8000 (GAN_* variables override the settings).
serve: venv
	$(BIN)/python -m service

test: venv system-deps
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check service training tests bench client
	$(BIN)/ruff format --check service training tests bench client
	$(BIN)/mypy service client/gan_client

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,cpu,grpc,dev]' -e client
	touch $@

# Debian packages the tests use: Fashion-MNIST (nothing is downloaded at run time), Prometheus and promtool,
# and Chromium for the playground's browser tests (Playwright drives it; it downloads no browser).
# kubectl (with its built-in kustomize) comes with the machine image; Debian's kubernetes-client is too old.
system-deps:
	@missing=""; \
	[ -d $(FASHION_MNIST_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages: sudo apt-get install$$missing" >&2; exit 1; fi; \
	fi
	@kubectl kustomize --help >/dev/null 2>&1 || { echo "kubectl with kustomize (>= 1.27) is needed to render k8s/" >&2; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
