# aaa-failover: `make demo`, `make test`, `make check`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aaa-failover demo

test: $(STAMP)
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check schemas services tests bench
	$(BIN)/ruff format --check schemas services tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(if $(QUICK),--quick)

schema: $(STAMP)
	$(BIN)/aaa-failover schema

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
