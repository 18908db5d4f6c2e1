# cass-deploy: the two commands.  `make demo` runs the whole path on CPU; `make test` runs the tests.
# Each target creates its own virtual environment (.venv) on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch keeps the venv small; override on a GPU machine, e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint docs venv clean

# .base: what `make demo` needs (torch + the package); .installed: + the test / lint extras
$(VENV)/.base: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# --no-compile: Python compiles what is imported on first use; pip would compile every file
	# of torch (most of the install time here). One pip call: one resolver pass.
	$(PY) -m pip install -q --no-compile "$(TORCH_SPEC)" -e .
	touch $@

$(VENV)/.installed: $(VENV)/.base
	$(PY) -m pip install -q --no-compile -e ".[dev]"
	touch $@

$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q --no-compile -e ".[docs]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.base
	$(VENV)/bin/cass-deploy demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# the import contract (pyproject.toml [tool.importlinter]) and ruff (lint + format, line length 120)
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the documentation site, strict: any warning fails (docs/conf.py; the command references are generated
# from cass_deploy/cli.py's parsers, the API pages from the docstrings). Open docs/_build/html/index.html.
docs: $(VENV)/.docs
	rm -rf docs/_build docs/_api
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/_api
