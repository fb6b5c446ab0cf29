# aaa-failover: `make demo`, `make test`, `make check`, `make bench`, `make lock`.
#
# Every install comes from the lock: uv.lock holds the whole dependency tree (runtime and every
# extra) with the hash of every file, and uv itself comes pinned and hashed from
# requirements/uv.txt. `uv sync --locked` refuses to run when pyproject.toml and uv.lock disagree.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv

# uv uses this interpreter and never downloads one; the project's environment is .venv.
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test check bench schema lock clean fuzz chaos

$(UV): requirements/uv.txt
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --no-deps --require-hashes -r requirements/uv.txt
	touch $(UV)

$(STAMP): pyproject.toml uv.lock $(UV)
	@echo "[install] $(VENV) from uv.lock, every extra, hashes checked (uv sync --locked)"
	$(UV) sync --locked --all-extras --quiet
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aaa-failover demo

test: $(STAMP)
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check schemas services tests bench compose
	$(BIN)/ruff format --check schemas services tests bench compose
	$(BIN)/mypy

# The fuzz suite at length: AAA_FUZZ_CASES cases per target (the ordinary suite runs 400), over
# every decoder of untrusted bytes; prints the cases run per target and in all. A failure names
# its seed and case: run again with AAA_FUZZ_SEED=<seed> to find it.
FUZZ_CASES ?= 100000
fuzz: $(STAMP)
	AAA_FUZZ_CASES=$(FUZZ_CASES) $(BIN)/pytest -m fuzz tests/fuzz --timeout 1800 -q

# The chaos matrix: during an incident of the demo's farm, at each moment (it opens,
# mid-overload, the first wave, before the final wave) each service, the nats-server, `up` and
# a cluster node SIGKILLed and started again, the recorded stream checked (tests/chaos). About
# half a minute a case; the ordinary suite runs a rotating share (tests/bus/test_chaos_rotation.py).
chaos: $(STAMP)
	$(BIN)/pytest -m chaos tests/chaos --timeout 900 -rA --durations=0

bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(if $(QUICK),--quick)

# `make soak`: the farm at ten times its normal event rate beside the same farm at the normal
# rate, 150 s each (bench/soak.py); `make soak LONG=1` an hour each, `make soak SOAK_S=600` any
# length. Prints the memory growth per service and every event lost; bench/results/soak.json.
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(if $(LONG),--long) $(if $(SOAK_S),--duration $(SOAK_S))

schema: $(STAMP)
	$(BIN)/aaa-failover schema

# Refresh the lock: every dependency to its newest release within pyproject.toml's bounds, and
# the hashes of the pinned uv. Commit uv.lock and requirements/uv.txt together.
lock: $(UV)
	$(UV) lock --upgrade
	$(UV) pip compile --quiet --universal --generate-hashes --custom-compile-command "make lock" \
	    requirements/uv.in -o requirements/uv.txt

clean:
	rm -rf $(VENV) $(UV_HOME) .pytest_cache .mypy_cache .ruff_cache

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
