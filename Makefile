# Set-up and entry points. `make demo` and `make test` work on a machine that only has Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-slow clean-demo

# TORCH_INDEX: a PyTorch wheel index (e.g. https://download.pytorch.org/whl/cu126) whose torch and
# torchvision go into the venv before the other requirements, which then keep them
TORCH_INDEX ?=

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install torch torchvision --index-url $(TORCH_INDEX))
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) demo.py

test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf demo_data work_dirs/demo
