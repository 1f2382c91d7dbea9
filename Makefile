# Two commands for a fresh machine:
#   make grid   set up .venv with what the grid needs and run the built-in default grid
#   make test   add the test extras to .venv and run the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision are installed first and explicitly, from TORCH_INDEX when it is set.
# A machine without an NVIDIA GPU can take PyTorch's CPU wheels (no CUDA libraries):
#   make grid TORCH_INDEX=https://download.pytorch.org/whl/cpu
# another release or platform: make grid TORCH="torch==X torchvision==Y"
TORCH ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
# Installed by `make test` without their dependencies, after the extras that hold their real
# needs: torchattacks pins requests~=2.25.1 (its own modules never import requests; the pin
# sends pip's resolver into resolution-too-deep), robustbench pins timm==1.0.9, older than
# the default grid's timm:test_resnet. robustbench comes last: torchattacks' wheel carries
# an old copy of the robustbench package.
TORCHATTACKS ?= torchattacks==3.5.1
ROBUSTBENCH ?= robustbench==1.1.1

.PHONY: setup setup-grid grid sample test test-fast bench lint clean

# the grid's needs only: robench and its dependencies, with the current pip
$(VENV)/.installed-grid: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e .
	touch $@

# the same venv, upgraded with everything the tests import
$(VENV)/.installed-test: $(VENV)/.installed-grid
	$(PIP) install -q -e ".[test,robustbench]"
	$(PIP) install -q --no-deps $(TORCHATTACKS)
	$(PIP) install -q --no-deps --force-reinstall $(ROBUSTBENCH)
	touch $@

setup-grid: $(VENV)/.installed-grid

setup: $(VENV)/.installed-test

grid: setup-grid
	$(VENV)/bin/robench grid

# regenerate the committed sample runs (samples/default, samples/robust-mnist) from scratch
sample: setup-grid
	$(VENV)/bin/robench grid --out samples --fresh
	$(VENV)/bin/robench grid examples/robust-mnist.toml --out samples --fresh

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-only

lint: setup
	$(VENV)/bin/ruff check robench plugins tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
