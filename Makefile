# Two commands for a fresh machine:
#   make grid   set up .venv and run the built-in default grid (digits -> digits-m)
#   make test   set up .venv and run the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first and explicitly; override for another platform,
# e.g. make TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup grid sample test test-fast bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# pip 23's resolver settles this project's dependencies in seconds; pip 26's backtracks
	# until resolution-too-deep (torchattacks pins requests 2.25), so pip stays below 24
	$(PY) -m pip install -q "pip>=23,<24"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	# robustbench pins timm==1.0.9, and gdown's requests[socks] defeats pip's resolver next to
	# torchattacks' requests~=2.25: these come without dependencies (the rest are test extras)
	$(PY) -m pip install -q --no-deps "robustbench==1.1.1" "pyautoattack==0.2.0" \
		"torchdiffeq==0.2.5" "geotorch==0.4.0" "gdown==6.5.1"
	touch $@

setup: $(VENV)/.installed

grid: setup
	$(VENV)/bin/robench grid

# regenerate the committed sample runs (samples/default, samples/robust-mnist) from scratch
sample: setup
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
