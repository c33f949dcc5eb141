# The two commands a new machine needs: `make run` and `make test`.
# `make web` serves the billing page next to `make run`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB := web
WEB_STAMP := $(WEB)/node_modules/.installed
CHROMIUM := /usr/bin/chromium
# Where `make web` finds the service started by `make run`.
API_URL ?= http://127.0.0.1:5000

export NEXT_TELEMETRY_DISABLED := 1
export NPM_CONFIG_UPDATE_NOTIFIER := false

.PHONY: install web-install run web test test-python test-pooled test-web faults migrate fuzz bench bench-quick bench-profile bench-queues bench-servers bench-migration wrk pgbouncer clean

$(STAMP): setup.cfg pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is required (found " + sys.version.split()[0] + ")") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e clients/python
	@touch $@

install: $(STAMP)

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci
	@touch $@

web-install: $(WEB_STAMP)

run: install
	$(BIN)/python -m devtools.devserver

# The billing page on http://127.0.0.1:3000/billing, built with a fresh token
# for the demo user of `make run` (which must be running, in another terminal).
# The token lives a day (JWT_MAX_LIFETIME_SECONDS); after that the page asks to
# sign in again: run `make web` again, or paste a fresh USER_TOKEN on /dev/sign-in.
web: install web-install
	@test -f instance/jwt-secret || { echo "instance/jwt-secret is missing: start the service with 'make run' first (in another terminal)." >&2; exit 1; }
	@token=$$(JWT_SECRET_KEY="$${JWT_SECRET_KEY:-$$(cat instance/jwt-secret)}" \
		JWT_DECODE_AUDIENCE="$${JWT_DECODE_AUDIENCE:-$$($(BIN)/python -c 'from devtools.devserver import DEV_AUDIENCE; print(DEV_AUDIENCE)')}" \
		DATABASE_URL="$${DATABASE_URL:-$$($(BIN)/python -m devtools.devdb url --database transactions)}" \
		$(BIN)/flask --app wsgi tokens issue --expires-in 24h \
		--user "$$($(BIN)/python -c 'from transactions_service.cli import DEMO_USER_ID; print(DEMO_USER_ID)')") && \
	cd $(WEB) && NEXT_PUBLIC_TRANSACTIONS_API_URL=$(API_URL) NEXT_PUBLIC_DEV_TOKEN="$$token" npm run build
	@echo "Billing page for the demo user: http://127.0.0.1:3000/billing  (service: $(API_URL); Ctrl-C to stop)"
	cd $(WEB) && npm start

test: install
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory test-web

test-python: install
	$(BIN)/python -m pytest

# The Python suite with the app (and every gunicorn it starts) behind a real
# PgBouncer in transaction mode; migrations and admin statements go direct.
test-pooled: install pgbouncer
	TEST_POOLED=1 $(BIN)/python -m pytest

# The banner `make test` prints when the browser tests cannot run.
SKIPPED_BROWSER_TESTS = printf '\n%s\n%s\n%s\n%s\n%s\n%s\n\n' \
	"========================================================================" \
	"!!  SKIPPED: the browser tests (web/tests/e2e) did NOT run," \
	"!!  because $(CHROMIUM) is missing. Install it and run them with:" \
	"!!      apt-get update && apt-get install -y chromium && make test-web" \
	"!!  (.ci/run installs it, so CI always runs them.)" \
	"========================================================================"

# Type check, component tests, then the browser tests, which build the page
# and run it against the real service. Without Chromium they are skipped
# loudly (and the page is still built); on CI they are required.
test-web: install web-install
	cd $(WEB) && npm run typecheck
	cd $(WEB) && npm test
	@if [ -x $(CHROMIUM) ]; then \
		cd $(WEB) && npm run test:e2e; \
	elif [ -n "$$CI" ]; then \
		$(SKIPPED_BROWSER_TESTS); echo "CI must run the browser tests." >&2; exit 1; \
	else \
		(cd $(WEB) && NEXT_PUBLIC_TRANSACTIONS_API_URL=$(API_URL) npm run build) && $(SKIPPED_BROWSER_TESTS); \
	fi

# Three minutes of load with crashes and database restarts; refreshes the report in docs/reliability.md.
faults: install
	$(BIN)/python scripts/faults.py --duration 180 --report docs/reliability.md

migrate: install
	$(BIN)/flask --app wsgi db upgrade

# The contract fuzzing of `make test`, with many more generated requests per operation and caller.
fuzz: install
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-400} $(BIN)/python -m pytest tests/test_fuzz.py

# Benchmarks (BENCHMARKS.md): minutes of load on loopback, never part of `make test`.
bench: install wrk pgbouncer
	$(BIN)/python -m bench.run --profile full

bench-quick: install wrk pgbouncer
	$(BIN)/python -m bench.run --profile quick

# Where the time goes on the hot paths (py-spy, pg_stat_statements, EXPLAIN); installs py-spy into the venv.
bench-profile: install wrk
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet --disable-pip-version-check py-spy
	$(BIN)/python -m bench.profile

# Our webhook queue against procrastinate and pgqueuer (throughput, wake-up, cost on the write), for ADR 0006;
# installs them into the venv, with psycopg 3 (procrastinate's driver, binary: no libpq needed) and asyncpg (pgqueuer's).
bench-queues: install
	@$(BIN)/python -c 'import procrastinate, pgqueuer, psycopg, asyncpg' 2>/dev/null || $(BIN)/python -m pip install \
		--quiet --disable-pip-version-check procrastinate pgqueuer 'psycopg[binary,pool]' asyncpg
	$(BIN)/python -m bench.queues
	$(BIN)/python -m bench.notify

# gunicorn against Granian on scenarios A and B, with correctness and fault checks; installs granian into the venv.
bench-servers: install wrk
	@test -x $(BIN)/granian || $(BIN)/python -m pip install --quiet --disable-pip-version-check granian
	$(BIN)/python -m bench.servers

# Migration 0005 (balances become lots) up, down and up again on the million-row ledger, timed.
bench-migration: install
	$(BIN)/python -m bench.migration

# The HTTP load generator, from Debian's packages.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "wrk is missing: run 'apt-get install -y wrk' as root" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q wrk || { apt-get update -q && apt-get install -y -q wrk; }; }

# The connection pooler of `make test-pooled` and the benchmarks, from Debian's packages.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || { \
	  if [ "$$(id -u)" != 0 ]; then echo "pgbouncer is missing: run 'apt-get install -y pgbouncer' as root" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q pgbouncer || { apt-get update -q && apt-get install -y -q pgbouncer; }; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache $(WEB)/node_modules $(WEB)/.next $(WEB)/test-artifacts
