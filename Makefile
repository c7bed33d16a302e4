# Set-up and entry points. `make demo` and `make test` work on a machine that only has Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-slow clean-demo

# install: scripts/install.sh, whose head explains the settings: LOCK (requirements.lock, the exact
# versions of the committed logs; LOCK= for the newest that requirements.txt admits), TORCH_INDEX (a
# PyTorch wheel index, e.g. https://download.pytorch.org/whl/cu126) and PYDENSECRF=0 (no C++
# compiler: everything but pydensecrf2; the CRF runs on the PyTorch backend). Only the settings
# given are passed: the others keep what the venv was made with.
SETTINGS := $(foreach v,LOCK TORCH_INDEX PYDENSECRF,$(if $(filter command line environment,$(origin $(v))),$(v)="$($(v))"))

install:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" $(SETTINGS) bash scripts/install.sh

demo: install
	$(PY) demo.py

test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf demo_data work_dirs/demo
