# Set-up is part of every command: each installs what is missing and is quick otherwise.
# PYTEST_ARGS goes to pytest (make test PYTEST_ARGS="--durations=0 -x"); the 25 slowest tests are always listed.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast install system

demo: install
	$(PY) -m hpccnn.demo

# on WORKERS processes side by side (pytest-xdist; tests/conftest.py keeps those that share a cluster together)
WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

# no SLURM cluster, no MPI ranks, nothing slow (the markers in pyproject.toml): under a minute, for development
test-fast: install
	$(PY) -m pytest -q -m "not slurm and not mpi and not slow"

install: system $(VENV)/.installed

system:
	@scripts/install_system.sh

$(VENV)/.installed: pyproject.toml requirements/base.txt requirements/constraints.txt scripts/install_python.sh
	scripts/install_python.sh $(VENV)
	touch $@
