# Two commands do all the set-up on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install compile clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project metadata changed.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Byte-compile the project: every actor process imports it at start, and with
# PYTHONDONTWRITEBYTECODE set Python would otherwise compile it again each time.
compile: $(STAMP)
	@$(PY) -m compileall -q supervisor.py actors bus config scripts

run: compile
	$(PY) supervisor.py $(ARGS)

# Every core (pytest-xdist): the tests spend most of their time waiting on real
# processes. PYTEST_ARGS="-n 0" runs them one at a time.
PYTEST_ARGS ?= -n auto

test: compile
	$(PY) -m pytest $(PYTEST_ARGS)

# Never a run directory: it holds a ledger (positions, cash, every fill) and results.
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
