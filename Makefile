# tensile: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
## Test processes (pytest-xdist), each running whole modules: the e2e suite mostly waits on control
## planes, so two workers keep two cores busy. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2
XDIST  := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: all install binaries manifests test test-long test-unit test-e2e test-example lint demo bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Control-plane binaries: $TENSILE_K8S_BIN, the cache, a release download, or a Go build.
binaries: $(STAMP)
	$(PY) -m e2e.binaries

## deploy/: the chart's RBAC rules and CRD from tensile's code, and deploy/manifests/ rendered from the
## chart with deploy/values/*.yaml (helm is obtained as `make binaries` does, and cached).
manifests: $(STAMP)
	$(PY) deploy/render.py

test-unit: $(STAMP)
	$(PY) -m pytest -q tests

test-e2e: binaries
	$(PY) -m pytest -q $(XDIST) e2e/tests

## Unit tests, lint, then end-to-end tests on real local control planes, then the example project
## (examples/paired), run from its own directory through the installed pytest plugin.
test: binaries lint
	$(PY) -m pytest -q $(XDIST) --durations=25 tests e2e/tests
	$(MAKE) test-example

test-example: $(STAMP)
	cd examples/paired && $(abspath $(PY)) -m pytest -q -p no:cacheprovider

## The long variants (scale, soak) of properties `make test` checks at a smaller size.
test-long: binaries
	$(PY) -m pytest -q $(XDIST) -m long e2e/tests

lint: $(STAMP)
	$(PY) -m ruff check tensile webhook scheduler descheduler topology e2e tests bench deploy
	$(PY) -m mypy
	$(PY) -m mypy deploy/render.py
	$(PY) -m mypy --explicit-package-bases bench/pods.py bench/report.py
	$(VENV)/bin/lint-imports

## Local upper + lower clusters, the virtual node and the webhook, a sample workload.
demo: binaries
	$(PY) -m e2e.demo

## BENCH_ARGS go to bench/pods.py, e.g. BENCH_ARGS="--pods 1000,5000,10000 --profile py-spy".
bench: binaries
	$(PY) -m bench.pods $(BENCH_ARGS)
	$(PY) bench/scheduler.py
	$(PY) -m bench.kubelet
	$(PY) -m bench.descheduler

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
