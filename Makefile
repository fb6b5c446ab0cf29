# aaa-failover: `make demo`, `make test`, `make check`, `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,report,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aaa-failover demo

test: $(STAMP)
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check schemas services tests bench compose
	$(BIN)/ruff format --check schemas services tests bench compose
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(if $(QUICK),--quick)

schema: $(STAMP)
	$(BIN)/aaa-failover schema

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make containers`: prepare podman (../shared/containers/setup-podman.sh, as root: slow the
# first time on a machine, about a second after), then build the images and run the compose
# stack for real, one overload incident end to end (tests/containers). Prints each step's time.
PODMAN_SETUP ?= ../shared/containers/setup-podman.sh
# What an earlier setup on this machine saved, for a checkout without ../shared beside it.
PODMAN_ENV ?= /var/lib/aaa-podman/env.sh

.PHONY: containers
containers: $(STAMP)
	@start=$$(date +%s); \
	if [ -f $(PODMAN_SETUP) ]; then \
	  setup="$$(bash $(PODMAN_SETUP))" || { echo "podman setup failed" >&2; exit 1; }; \
	elif [ -f $(PODMAN_ENV) ]; then \
	  setup="$$(cat $(PODMAN_ENV))"; \
	else \
	  echo "no $(PODMAN_SETUP) and no $(PODMAN_ENV): cannot prepare podman" >&2; exit 1; \
	fi; \
	eval "$$setup"; \
	echo "[containers] podman ready in $$(( $$(date +%s) - start ))s"; \
	$(BIN)/pytest tests/containers -v -s
