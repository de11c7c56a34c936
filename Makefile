# Every target creates .venv (via `make install`) first, so a fresh machine with only
# Python 3.11+ can run `make demo` and `make test` directly.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration bench-operator bench-prewarm bench-canary bench-preload lock-operator clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[preloader,dev]'
	touch $(STAMP)

demo: install
	$(PY) -m devstack.demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile Dockerfile.gpu

test: lint
	$(PY) -m pytest -q

bench-operator: install
	$(PY) -m bench.bench_operator

bench-prewarm: install
	$(PY) -m bench.bench_prewarm

bench-canary: install
	$(PY) -m bench.bench_canary

bench-preload: install
	$(PY) -m pip install --quiet -c constraints.txt -e '.[preloader,dev,bench]'
	$(PY) -m bench.bench_preload

lock-operator: install
	$(PY) -m devstack.lock_operator

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
