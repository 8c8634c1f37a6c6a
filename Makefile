# Quick start: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what they need; after either, .venv/bin/modelctl exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The policy pack's own virtualenv: pulumi-policy needs protobuf < 6, TensorFlow >= 6.
POLICY_VENV := .venv-policy
POLICY_STAMP := $(POLICY_VENV)/.installed

.PHONY: install demo test test-fast lint schema policy-config codeowners bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(POLICY_STAMP): policy/requirements.txt
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r policy/requirements.txt
	touch $(POLICY_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelctl validate
	$(BIN)/python -m scripts.demo

test: $(STAMP) $(POLICY_STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP) $(POLICY_STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

policy-config: $(STAMP)
	for stack in $$($(BIN)/python -c 'from infra.spec.settings import stack_names; from pathlib import Path; print(*stack_names(Path(".")))'); do $(BIN)/modelctl policy-config --stack $$stack > policy/config/$$stack.json; done

codeowners: $(STAMP)
	$(BIN)/modelctl codeowners > .github/CODEOWNERS

schema: $(STAMP)
	$(BIN)/modelctl schema --output models/manifest.schema.json

clean:
	rm -rf build .pytest_cache

bench: $(STAMP)
	$(BIN)/python -m scripts.bench_plan
