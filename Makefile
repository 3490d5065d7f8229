# One-word entry points. `make demo` installs and runs the main job on a bundled sample;
# `make test` installs and runs the test suite (what CI runs).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: setup demo test fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,blender]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m backend.app.demo

test: setup
	$(PY) -m pytest -q

# Hostile-input campaign (bench/fuzz.py): 10,000 loader cases, 40 sprig CLI runs, 1,000 server lines, 50 SIGKILLs (#18).
fuzz: setup
	$(PY) -m bench.fuzz --cases 10000 --cli 40 --server 1000 --kill 50 --seed 0

clean:
	rm -rf $(VENV) build *.egg-info demo_output
