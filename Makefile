# modelseal: every entry point a developer or CI needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
CHAIN ?= single-stage
# Image architectures (comma-separated linux/amd64,linux/arm64); empty: the Docker engine's own.
PLATFORMS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup dist demo demo-up demo-down demo-local images sizes publish test test-fast test-multiarch mutants bench bench-large soak lint lint-python lint-shell clean

$(PY):
	python3 -m venv $(VENV)

setup: $(PY) tools/s3rver/node_modules tools/azurite/node_modules tests/.wheelhouse/.done  ## the library (with the cloud, inject and cli extras) and the test tools in .venv, host tools from Debian
	@tools/host-packages.sh
	$(PY) -m pip install -q -e './shared[cloud,inject,cli]' -r requirements-dev.txt

# The images' pinned, hashed wheels for this machine's Python: tests/test_release.py
# installs the built wheel from them into a fresh venv, offline.
tests/.wheelhouse/.done: images/requirements-core.txt images/requirements-cloud.txt | $(PY)
	$(PY) -m pip download -q --only-binary=:all: --dest tests/.wheelhouse -r images/requirements-core.txt -r images/requirements-cloud.txt
	@touch $@

dist: $(PY)  ## the Python package: sdist and wheel in dist/, with the commit for `modelseal --version` (tools/dist.sh)
	$(PY) -m pip install -q $$(grep -E '^(build|setuptools)==' requirements-dev.txt)
	rm -rf dist
	PYTHON=$(PY) tools/dist.sh dist

tools/s3rver/node_modules: tools/s3rver/package-lock.json  ## s3rver (npm): the fast S3 server of the size tests and benchmarks
	@tools/host-packages.sh
	cd tools/s3rver && npm ci --silent --no-audit --no-fund
	@touch $@

tools/azurite/node_modules: tools/azurite/package-lock.json  ## Azurite (npm): Microsoft's Azure Storage emulator, for the azblob:// tests
	@tools/host-packages.sh
	cd tools/azurite && npm ci --silent --no-audit --no-fund
	@touch $@

demo:  ## the main job end to end: a trained model sealed, each chain over tmpfs, MLServer answering correctly
	demo/compose.sh all

demo-up:  ## one chain (CHAIN=single-stage|four-stage|legacy), leaving MLServer answering on 127.0.0.1:47562
	demo/compose.sh up $(CHAIN)

demo-down:  ## remove everything demo-up left: containers, volumes, network
	demo/compose.sh down

demo-local: setup  ## the same job without containers, on /dev/shm
	demo/local.sh

images:  ## build every image (starts the Docker engine when none runs); PLATFORMS=linux/amd64,linux/arm64 for both
	PLATFORMS="$(PLATFORMS)" images/build.sh

sizes: images  ## each image's size per architecture, compressed and not
	PLATFORMS="$(PLATFORMS)" images/sizes.sh

publish: setup images  ## push REGISTRY=host[:port]/prefix: an index per stage (PLATFORMS), SBOMs, signatures; prints digests
	REGISTRY="$(REGISTRY)" PLATFORMS="$(PLATFORMS)" images/publish.sh

test: setup images  ## the whole suite, container tests included
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# Both architectures, the arm64 one through qemu-user-static (minutes: README, Images), then the
# release tests with both in the index and the arm64 images running the chain.
test-multiarch: PLATFORMS = linux/amd64,linux/arm64
test-multiarch: setup images  ## make publish's index with amd64 and arm64, the arm64 chain under emulation
	MODELSEAL_MULTIARCH=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests/containers/test_release_images.py

test-fast: setup  ## everything but the container tests
	$(PY) -m pytest -q $(PYTEST_ARGS) --ignore=tests/containers tests

mutants: setup  ## plant each curated bug (tools/mutants.toml) in a copy of the library; fail if a test misses one
	$(PY) tools/mutants.py

bench: setup  ## every benchmark in bench/ (decrypt, run, scaling, fetch, https, oci, verify, openpgp, s2k, large), then one table of ratios
	$(PY) bench/all.py

bench-large: setup  ## LLM-sized models: run and decrypt at 1, 4 and 16 GiB against tar -xf and dd, then the S3 client CPU at 4 GiB (needs ~34 GiB on /var/tmp, 17 GiB of /dev/shm)
	BENCH_SIZES_GIB="1 4 16" $(PY) bench/large.py
	BENCH_FETCH_GIB=4 BENCH_ROUNDS=5 $(PY) bench/fetch.py

SOAK_ARGS ?=
soak: setup  ## the long soak (issue 25): 128 deliveries, 16 at once, under faults, kills and resource limits; a table (SOAK_ARGS: --seed, --concurrency, --deliveries)
	$(PY) bench/soak.py $(SOAK_ARGS)

# Every shell script: the images' and the demo's build scripts, tools/, CI's entry point.
SCRIPTS := $(wildcard images/*.sh images/*/*.sh demo/*.sh demo/images/*.sh demo/images/*/*.sh tools/*.sh) .ci/run

lint: lint-python lint-shell  ## every linter (CI runs it first)

lint-python: setup  ## every module byte-compiles; ruff (ruff.toml) on all Python, mypy (shared/pyproject.toml) on the library
	$(PY) -m compileall -q shared/modelseal tests bench tools images/release
	$(PY) -m ruff check shared/modelseal tests bench tools images/release
	cd shared && $(abspath $(PY)) -m mypy --config-file pyproject.toml

lint-shell: setup  ## shellcheck (Debian's, from tools/host-packages.sh) on every shell script
	shellcheck $(SCRIPTS)

clean:
	rm -rf $(VENV) shared/*.egg-info dist tests/.wheelhouse
