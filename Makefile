# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test migrate fuzz bench bench-quick bench-profile wrk clean

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

migrate: install
	$(BIN)/flask --app wsgi db upgrade

# The contract fuzzing of `make test`, with many more generated requests per operation and caller.
fuzz: install
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-400} $(BIN)/python -m pytest tests/test_fuzz.py

# Benchmarks (issue 6, BENCHMARKS.md): minutes of load on loopback, never part of `make test`.
bench: install wrk
	$(BIN)/python -m bench.run --profile full

bench-quick: install wrk
	$(BIN)/python -m bench.run --profile quick

# Where the time goes on the hot paths (py-spy, pg_stat_statements, EXPLAIN); installs py-spy into the venv.
bench-profile: install wrk
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet --disable-pip-version-check py-spy
	$(BIN)/python -m bench.profile

# The HTTP load generator, from Debian's packages.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "wrk is missing: run 'apt-get install -y wrk' as root" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q wrk || { apt-get update -q && apt-get install -y -q wrk; }; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
