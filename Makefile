# The two commands the README leads with: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint venv clean coverage coverage-hook

$(BIN)/printd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/printd

run: venv  ## install, then run printd on its embedded default (SQLite in ./var, 127.0.0.1:3001)
	$(BIN)/printd run

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: venv  ## install, make sure PostgreSQL and Redis run, then the whole suite (SQLite, then PostgreSQL)
	scripts/ensure-services
	$(BIN)/pytest -q
	@echo "== integration suite again, every printd on PostgreSQL =="
	PRINTD_TEST_BACKEND=postgres $(BIN)/pytest -q tests/integration -k "not sqlite and not postgres"

# Measuring every Python process the suite starts (printd, printctl agents, probes): the hook runs
# coverage.process_startup() at interpreter start when COVERAGE_PROCESS_START is set, else nothing.
COVERAGE_PTH = $(shell $(PY) -c 'print("$(VENV)/lib/python%d.%d/site-packages/printd-coverage.pth" % __import__("sys").version_info[:2])')

coverage-hook: venv
	echo 'import os; os.environ.get("COVERAGE_PROCESS_START") and __import__("coverage").process_startup()' > $(COVERAGE_PTH)

coverage: coverage-hook  ## the whole suite under branch coverage, subprocesses too, then a per-package report (not in `make test`)
	scripts/ensure-services
	rm -f .coverage .coverage.*
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/python -m pytest -q; \
	status=$$?; \
	$(BIN)/coverage combine -q --rcfile=pyproject.toml && $(BIN)/python -m tests.coverage_report; \
	exit $$status

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
