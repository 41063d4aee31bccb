# Beatkeeper's everyday commands. `make run` and `make test` do all the set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
# The browser tests (tests/browser.py) drive Debian's Chromium; `make test` installs it when missing.
BEATKEEPER_CHROMIUM ?= /usr/bin/chromium
export BEATKEEPER_CHROMIUM

.PHONY: run test lint format check-deploy clean help

help:
	@echo "make run    - set up, then run web + worker + beat + recorder (+ embedded Redis) until Ctrl-C"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make lint   - ruff (check, format), mypy --strict, import-linter (layers, no circles)"
	@echo "make clean  - remove the virtualenv and var/ (the local database and broker data)"

run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py launch

test: $(VENV)/.dev-installed $(BEATKEEPER_CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Beatkeeper needs Python 3.11 or newer; run e.g. 'make run PYTHON=python3.12'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.runtime-installed: requirements.txt $(VENV)/.python-ok
	$(PIP) install -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt $(VENV)/.python-ok
	$(PIP) install -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime-installed

# Debian's chromium package, for the browser tests. Tries the apt lists at hand first and
# refreshes them only if that fails (a fresh machine has none, or they name a superseded version).
/usr/bin/chromium:
	@command -v apt-get >/dev/null || { echo "The browser tests need Chromium at $@ and this is no Debian/Ubuntu: \
	install it, or point BEATKEEPER_CHROMIUM at a Chromium or Chrome binary." >&2; exit 1; }
	@if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
	  echo "The browser tests need Chromium: run 'apt-get install --no-install-recommends chromium' as root." >&2; exit 1; fi; \
	install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium"; \
	echo "Installing Debian's chromium for the browser tests"; \
	$$install >/dev/null 2>&1 || { $$sudo apt-get update -q && $$install; } || \
	  { echo "Could not install Debian's chromium (see apt-get's output above); the browser tests need it." >&2; exit 1; }
	@test -x $@ || { echo "apt-get installed chromium but $@ is missing." >&2; exit 1; }
