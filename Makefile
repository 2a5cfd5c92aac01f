# Set-up is part of every command: each installs what is missing and is quick otherwise.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install system

demo: install
	$(PY) -m hpccnn.demo

test: install
	$(PY) -m pytest -q

install: system $(VENV)/.installed

system:
	@scripts/install_system.sh

$(VENV)/.installed: pyproject.toml requirements/base.txt requirements/constraints.txt scripts/install_python.sh
	scripts/install_python.sh $(VENV)
	touch $@
