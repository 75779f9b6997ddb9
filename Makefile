# Every target sets itself up on a fresh machine; the stamp files make set-up a no-op when neither
# pyproject.toml nor the lock file has changed. Installs use the exact versions in requirements/lock.txt
# (pip constraints), so a dependency's new release cannot change what a fresh clone gets; `make lock`
# regenerates it from the ranges in pyproject.toml, `make test-latest` tries the newest allowed versions.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
LATEST := .venv-latest
OUT ?= demo_out

.PHONY: demo test test-latest lock bench lint setup setup-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The lock pins torch to its CPU wheel, so no package can pull a CUDA build.
$(VENV)/.stamp-all: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[all]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[dev]"
	touch $@ $(VENV)/.stamp-all

setup: $(VENV)/.stamp-all
setup-dev: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-all
	$(BIN)/triptych demo --out $(OUT)

test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -q

# Regenerate the lock from pyproject.toml's ranges (a scratch venv in .venv-lock; a few minutes).
lock:
	$(PY) requirements/lock.py

# The suite against the newest versions pyproject.toml allows, in its own venv (not in CI).
# torch goes first: the CPU wheel, before anything can ask for another build.
test-latest:
	test -x $(LATEST)/bin/python || $(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "torch==2.13.0"
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q

bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks requirements
	$(BIN)/ruff format --check src tests benchmarks requirements

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock $(OUT)
