# Set-up and entry points. `make demo` and `make test` work on a machine that only has Python.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean-demo

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) demo.py

test: install
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf demo_data work_dirs/demo
