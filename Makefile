# modelseal: every entry point a developer or CI needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo demo-local test bench images sizes lint clean

$(PY):
	python3 -m venv $(VENV)

setup: $(PY)  ## install the library (with the cloud extras) and the test tools into .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e './shared[cloud]' -r requirements-dev.txt

demo: demo-local  ## the main job end to end on a built-in demo model

demo-local: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" demo/local.sh

test: setup  ## the test suite (pytest exit 5, "no tests", counts as a failure to find tests)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: setup  ## benchmarks: printed tables of ratios measured side by side
	command -v /usr/bin/time >/dev/null || (apt-get update -qq && apt-get install -y -qq time gnupg >/dev/null)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/decrypt.py

lint: setup
	$(PY) -m compileall -q shared/modelseal tests bench

clean:
	rm -rf $(VENV) shared/*.egg-info
