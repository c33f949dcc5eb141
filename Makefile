# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test faults migrate clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is required (found " + sys.version.split()[0] + ")") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/python -m transactions_service.devserver

test: install
	$(BIN)/python -m pytest

# Three minutes of load with crashes and database restarts; refreshes the report in docs/reliability.md.
faults: install
	$(BIN)/python scripts/faults.py --duration 180 --report docs/reliability.md

migrate: install
	$(BIN)/flask --app wsgi db upgrade

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
