# Beatkeeper's everyday commands. `make run` and `make test` do all the set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: run test lint format check-deploy clean help

help:
	@echo "make run    - set up, then run web + worker + beat (+ embedded Redis) until Ctrl-C"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make lint   - ruff check and format check"
	@echo "make clean  - remove the virtualenv and var/ (the local database and broker data)"

run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py launch

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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
