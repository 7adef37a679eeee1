# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
# The first of python3.12, python3.11, python3 that actually runs and is 3.11+ (pyenv shims may not).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && command -v $$p && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-browser test-clients js-deps test-postgres test-all soak bench lint format typecheck audit clean

$(STAMP): requirements/base.txt requirements/dev.txt requirements/prod.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m backend.stack

# Two pytest-xdist workers, each with a Redis, a database and a temporary root of its own (tests/conftest.py);
# whole files go to one worker (--dist loadfile), so a module's stack is made once. The integration tests
# mostly wait on their servers and workers, so two run side by side in about a third of the serial time.
# `TEST_WORKERS=0 make test` runs serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The real tus clients from npm (tus-js-client in Node), the reference tus server and the fan-out
# benchmarks' websocket subscribers (ws) for `make bench`:
# tests/js/package.json, installed exactly from its lockfile. Needs node and npm (`.ci/run` installs them).
JS_STAMP := tests/js/node_modules/.installed
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

js-deps: $(JS_STAMP)

# The tests marked slow (512 MiB through a live server, a real full disk, `make run` itself): out
# of `make test`, run by CI (`.ci/run`).
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The web page in a real browser: Playwright (requirements/browser.txt) drives Debian's Chromium at
# /usr/bin/chromium (apt-get install chromium; `.ci/run` does it). Not part of `make test`. The npm
# packages too (Uppy's @uppy/tus from another origin), so node and npm as for test-clients.
BROWSER_STAMP := $(VENV)/.installed-browser
$(BROWSER_STAMP): $(STAMP) requirements/browser.txt
	$(PY) -m pip install --quiet -r requirements/browser.txt
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP) $(JS_STAMP)
	$(PY) -m pytest tests/browser

test-clients: $(STAMP) $(JS_STAMP)
	$(PY) -m pytest tests/clients

# The integration suite against PostgreSQL: the tests start a private cluster (initdb on a free port),
# never a server already running; they need PostgreSQL's server binaries (`.ci/run` installs them).
test-postgres: $(STAMP) $(VENV)/.installed-prod
	TEST_DATABASE=postgres $(PY) -m pytest tests/integration

$(VENV)/.installed-prod: $(STAMP) requirements/prod.txt
	$(PY) -m pip install --quiet -r requirements/prod.txt
	touch $@

# 200 uploads under cancels, retries, deletes and worker kills; minutes, so not part of `make test`.
soak: $(STAMP)
	$(PY) -m pytest tests/soak -m soak -s --timeout 1200

bench: $(STAMP) $(JS_STAMP)
	$(PY) -m tests.bench

# ruff, then the import-linter contracts of pyproject.toml (the layers; fails on a cycle or a layer broken).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP)
	$(VENV)/bin/mypy backend schema

# Known vulnerabilities in every pinned requirement. Needs network access to the advisory database
# (PyPI's JSON API / OSV), so it is not part of `make test` or CI; --strict fails when a package
# cannot be looked up, instead of passing without having checked it.
AUDIT_VENV := var/audit-venv
audit: requirements/audit.txt
	test -x $(AUDIT_VENV)/bin/pip-audit || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install --quiet -r requirements/audit.txt
	$(AUDIT_VENV)/bin/pip-audit --strict --disable-pip --no-deps --progress-spinner off \
		-r requirements/prod.txt -r requirements/dev.txt -r requirements/audit.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
