# The two commands the README leads with: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint venv clean

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

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
