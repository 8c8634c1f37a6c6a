# Quick start: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what they need; after either, .venv/bin/modelctl exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint schema bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelctl validate
	$(BIN)/python -m scripts.demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

schema: $(STAMP)
	$(BIN)/modelctl schema --output models/manifest.schema.json

clean:
	rm -rf build .pytest_cache

bench: $(STAMP)
	$(BIN)/python -m scripts.bench_plan
