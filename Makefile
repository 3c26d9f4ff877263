# modelseal: every entry point a developer or CI needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo demo-local images sizes test test-fast bench lint clean

$(PY):
	python3 -m venv $(VENV)

setup: $(PY)  ## the library (with cloud extras) and the test tools in .venv, host tools from Debian
	@tools/host-packages.sh
	$(PY) -m pip install -q -e './shared[cloud]' -r requirements-dev.txt

demo:  ## the main job end to end: containers over tmpfs, S3 + KMS, a model server answering
	demo/compose.sh all

demo-local: setup  ## the same job without containers, on /dev/shm
	demo/local.sh

images:  ## build every image (starts the Docker engine when none runs)
	images/build.sh

sizes: images
	images/sizes.sh

test: setup images  ## the whole suite, container tests included
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: setup  ## everything but the container tests
	$(PY) -m pytest -q $(PYTEST_ARGS) --ignore=tests/containers tests

bench: setup  ## benchmarks: printed tables of ratios measured side by side
	$(PY) bench/decrypt.py
	$(PY) bench/run.py
	$(PY) bench/openpgp.py
	$(PY) bench/s2k.py
	$(PY) bench/fetch.py

lint: setup
	$(PY) -m compileall -q shared/modelseal tests bench

clean:
	rm -rf $(VENV) shared/*.egg-info
