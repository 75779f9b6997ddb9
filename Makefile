# Every target sets itself up on a fresh machine; the stamp files make it a no-op when
# pyproject.toml has not changed.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
OUT ?= demo_out

.PHONY: demo test bench lint setup setup-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is installed first and pinned so that no other package can pull a CUDA build.
$(VENV)/.stamp-all: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.stamp-all

setup: $(VENV)/.stamp-all
setup-dev: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-all
	$(BIN)/triptych demo --out $(OUT)

test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -q

bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/run_all.py

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks || true

clean:
	rm -rf $(VENV) $(OUT)
