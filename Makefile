# Quick start: `make demo` (the main job on embedded defaults) and `make test`.
# Both create .venv and install what they need; after either, .venv/bin/modelctl exists.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The policy pack's own virtualenv: pulumi-policy needs protobuf < 6, TensorFlow >= 6.
POLICY_VENV := .venv-policy
POLICY_STAMP := $(POLICY_VENV)/.installed
# Prometheus's own rule checker and tester (tests/promtool.py), from Debian's prometheus package.
PROMTOOL := $(BIN)/promtool

.PHONY: install demo e2e test test-fast lint shellcheck-installed chromium-installed schema policy-config codeowners bench bench-input clean

$(STAMP): requirements.txt requirements-training.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(POLICY_STAMP): policy/requirements.txt
	test -x $(POLICY_VENV)/bin/python || $(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r policy/requirements.txt
	touch $(POLICY_STAMP)

# shellcheck is a Debian package, not a Python requirement: install it when it is missing
# (CI runs .ci/run as root on a fresh machine; elsewhere run the apt-get line as root).
# `make test` needs it too: tests/test_workflows.py runs it, and actionlint checks `run:`
# blocks with it only when it is on PATH (otherwise silently not).
shellcheck-installed:
	@command -v shellcheck > /dev/null || { \
	  echo "shellcheck is missing: installing Debian's package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; \
	} || { echo "could not install shellcheck: run 'apt-get install shellcheck' as root" >&2; exit 1; }

# promtool (`promtool check rules`, `promtool test rules`: tests/test_promql.py) is in Debian's
# prometheus package, which also ships the server and a service unit. Only the promtool binary is
# taken: the one on PATH, or the package's, downloaded and unpacked without installing it (so no
# Prometheus server is started on the machine).
$(PROMTOOL): $(STAMP)
	@if command -v promtool > /dev/null; then ln -sf "$$(command -v promtool)" $@; else \
	  echo "promtool is missing: unpacking it from Debian's prometheus package"; \
	  scratch=$$(mktemp -d) && \
	  { apt-get update -qq && (cd "$$scratch" && apt-get download -qq prometheus 2> /dev/null) && \
	    dpkg-deb -x "$$scratch"/prometheus_*.deb "$$scratch/root" && cp "$$scratch/root/usr/bin/promtool" $@; }; \
	  status=$$?; rm -rf "$$scratch"; \
	  test $$status -eq 0 || { echo "could not get promtool: run 'apt-get install prometheus' as root" >&2; exit 1; }; \
	fi

# The catalog's browser tests (tests/test_catalog_browser.py) drive Debian's Chromium through its
# chromedriver with Selenium; both are Debian packages, installed the same way as shellcheck.
chromium-installed:
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || { \
	  echo "chromium or chromedriver is missing: installing Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	} || { echo "could not install chromium: run 'apt-get install chromium chromium-driver' as root" >&2; exit 1; }

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelctl validate
	$(BIN)/python -m scripts.demo

# The project on a real cluster (kind): needs Docker, kind, kubectl and the Pulumi CLI; see the
# README, "See it serve". Logs in build/e2e/; the cluster is deleted at the end, also on failure.
e2e: $(STAMP)
	bash scripts/e2e/e2e.sh

test: $(STAMP) $(POLICY_STAMP) $(PROMTOOL) shellcheck-installed chromium-installed
	$(BIN)/python -m pytest

test-fast: $(STAMP) $(POLICY_STAMP) $(PROMTOOL) shellcheck-installed chromium-installed
	$(BIN)/python -m pytest -m "not slow"

# actionlint checks every workflow under .github/workflows (and their `run:` blocks with
# shellcheck); shellcheck checks every shell script that tests/shell_scripts.py lists; zizmor
# audits the workflows' security, --offline (no GitHub API: audits that need it are skipped),
# failing on any finding not ignored in place with a reason (docs.zizmor.sh/usage).
lint: $(STAMP) shellcheck-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/actionlint
	shellcheck $$($(BIN)/python -m tests.shell_scripts)
	$(BIN)/zizmor --offline .github/workflows

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
	$(BIN)/python -m scripts.bench_density

bench-input: $(STAMP)
	$(BIN)/python -m scripts.bench_input
