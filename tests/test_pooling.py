"""Behind PgBouncer in transaction mode, the service leaves nothing on the connections it shares.

A PgBouncer with one server connection for the database puts every client on
the same PostgreSQL backend, one transaction at a time, as a busy production
pool does. The service runs its repertoire through it (writes with
idempotency keys, replays, holds, settles, history, balance, readiness, the
housekeeping commands), and then that backend is inspected: a session-level
SET, a prepared statement, an advisory lock, a LISTEN, a held cursor or a
temporary table left behind would be there, waiting for the next client.
``make test-pooled`` runs the whole suite through a pooler; this module is the
part of it that ``make test`` runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from click.testing import CliRunner
from flask import Flask

from bench.seed import main as bench_seed
from devtools.devpooler import PgBouncer, pgbouncer_binary
from transactions_service.auth import issue_token
from transactions_service.extensions import db
from transactions_service.scopes import SERVICE_SCOPES

from .conftest import TEST_SECRET, PostgresServer, create_key, make_app, migrate_database
from .helpers import Api, bearer, totals

STATEMENT_TIMEOUT_MS = 10_000
LOCK_TIMEOUT_MS = 300  # short, so that the 409 below comes quickly
# Parameters PgBouncer itself tracks and sets on a server connection for each client: not the service's doing.
POOLER_MANAGED = {"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"}


def dsn(url: str) -> str:
    return url.replace("+psycopg2", "")


@pytest.fixture(scope="module")
def pooled_database(postgres: PostgresServer) -> Iterator[str]:
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the pooling tests: .ci/run installs pgbouncer")
        pytest.skip("pgbouncer is not installed: apt-get install -y pgbouncer (make test-pooled does it as root)")
    url = postgres.create_database("tx_pooling")
    postgres.set_role_timeouts(url, STATEMENT_TIMEOUT_MS, LOCK_TIMEOUT_MS)
    migrate_database(url)
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module")
def pooler(
    postgres: PostgresServer, pooled_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), postgres.admin_url.render_as_string(hide_password=False),
                        pool_size=1).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooled_app(pooler: PgBouncer, pooled_database: str) -> Iterator[Flask]:
    app = make_app(pooler.url(pooled_database), DATABASE_CONNECT_OPTIONS=False,
                   DATABASE_STATEMENT_TIMEOUT_MS=STATEMENT_TIMEOUT_MS, DATABASE_LOCK_TIMEOUT_MS=LOCK_TIMEOUT_MS)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def pooled_api(pooled_app: Flask) -> Api:
    def user_token(user_id: uuid.UUID | str) -> str:
        with pooled_app.app_context():
            return issue_token(str(user_id))

    admin = create_key(pooled_app, *sorted(SERVICE_SCOPES), name="ledger-admin")
    return Api(pooled_app.test_client(), admin, user_token)


def session_state(url: str) -> dict[str, object]:
    """What the (only) server connection behind the pooler carries from one transaction to the next."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
            cursor.execute("SELECT lower(name), setting FROM pg_settings WHERE source = 'session'")
            settings = {name: value for name, value in cursor.fetchall() if name not in POOLER_MANAGED}
            cursor.execute("SELECT name FROM pg_prepared_statements")
            prepared = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            advisory_locks = cursor.fetchone()[0]
            cursor.execute("SELECT pg_listening_channels()")
            channels = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT name FROM pg_cursors")
            cursors = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
            temporary = [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()
    return {"pid": pid, "settings": settings, "prepared": prepared, "advisory_locks": advisory_locks,
            "channels": channels, "cursors": cursors, "temporary": temporary}


CLEAN = {"settings": {}, "prepared": [], "advisory_locks": 0, "channels": [], "cursors": [], "temporary": []}


def without_pid(state: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in state.items() if key != "pid"}


def test_what_one_client_leaves_on_the_server_connection_the_next_one_gets(pooler, pooled_database):
    """The check below can fail: through this pooler, a session SET outlives its client."""
    url = dsn(pooler.url(pooled_database))
    leaking = psycopg2.connect(url)
    leaking.autocommit = True
    with leaking.cursor() as cursor:
        cursor.execute("SET work_mem = '77MB'")
        cursor.execute("PREPARE leaked AS SELECT 1")
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    leaking.close()

    state = session_state(url)
    assert state["pid"] == pid
    assert state["settings"] == {"work_mem": str(77 * 1024)}
    assert state["prepared"] == ["leaked"]

    cleaning = psycopg2.connect(url)
    cleaning.autocommit = True
    with cleaning.cursor() as cursor:
        cursor.execute("DISCARD ALL")
    cleaning.close()
    assert without_pid(session_state(url)) == CLEAN


HOUSEKEEPING = (
    ["transactions", "expire-holds"],
    ["idempotency", "prune", "--older-than", "30d"],
    ["demo", "seed"],
)


def test_the_service_leaves_no_session_state_on_a_shared_server_connection(pooler, pooled_database, pooled_app,
                                                                           pooled_api):
    before = session_state(dsn(pooler.url(pooled_database)))
    api = pooled_api
    assert api.client.get("/readyz").status_code == 200
    user_id = api.register()
    purchase = api.purchase(user_id, credits=100, key="evt_pooled", status="pending")
    assert purchase.status_code == 201
    replay = api.purchase(user_id, credits=100, key="evt_pooled", status="pending")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert api.settle(purchase.json["id"], "completed").status_code == 200
    hold = api.usage(user_id, credits=-30, status="pending", key="job_pooled")
    assert hold.status_code == 201
    assert api.settle(hold.json["id"], "failed").status_code == 200
    assert api.usage(user_id, credits=-500).json["code"] == "insufficient_credits"
    assert api.usage(user_id, credits=-40).status_code == 201
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 60, "held": 0, "available": 60}
    assert len(api.all_history(user_id, limit=1)) == 3
    own = api.client.get("/api/transactions", headers=bearer(api.user_token(user_id)))
    assert len(own.json["data"]) == 3
    released = api.client.get(f"/api/transactions/{hold.json['id']}", headers=bearer(api.admin_token))
    assert released.json["status"] == "failed"
    runner = pooled_app.test_cli_runner()
    for command in HOUSEKEEPING:
        result = runner.invoke(args=command)
        assert result.exit_code == 0, result.output
    # The benchmark seed's invariant check, as `python -m bench.seed --check` runs behind the pooler.
    environment = {"DATABASE_URL": pooler.url(pooled_database), "JWT_SECRET_KEY": TEST_SECRET,
                   "DATABASE_CONNECT_OPTIONS": "false"}
    result = CliRunner().invoke(bench_seed, ["--check"], env=environment)
    assert result.exit_code == 0, result.output

    after = session_state(dsn(pooler.url(pooled_database)))
    assert after["pid"] == before["pid"], "the pooler replaced its server connection: the check saw another backend"
    assert without_pid(after) == CLEAN


def test_a_key_held_by_an_unfinished_request_is_409_after_the_roles_lock_timeout(pooled_database, pooled_api):
    """The lock timeout reaches the server without startup options: it is the role's setting."""
    user_id = pooled_api.register()
    first = psycopg2.connect(dsn(pooled_database))  # the request still in flight, on a connection of its own
    try:
        with first.cursor() as cursor:
            cursor.execute(
                "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id) "
                "VALUES ('ledger-admin', 'evt_in_flight', 'x', 201, '{}', %s)",
                (str(uuid.uuid4()),),
            )
        response = pooled_api.purchase(user_id, key="evt_in_flight")
    finally:
        first.rollback()
        first.close()
    assert response.status_code == 409
    assert response.json["code"] == "idempotency_key_in_use"
    assert response.headers["Retry-After"] == "1"


def test_a_timeout_the_server_does_not_apply_is_logged(pooler, pooled_database, capsys):
    app = make_app(pooler.url(pooled_database), DATABASE_CONNECT_OPTIONS=False,
                   DATABASE_STATEMENT_TIMEOUT_MS=STATEMENT_TIMEOUT_MS, DATABASE_LOCK_TIMEOUT_MS=5_000)
    try:
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        with app.app_context():
            db.engine.dispose()
    logged = capsys.readouterr().err
    assert "lock_timeout is 300 ms on the server but DATABASE_LOCK_TIMEOUT_MS is 5000" in logged
    assert "statement_timeout" not in logged


def test_matching_server_timeouts_are_not_logged(pooled_app, capsys):
    assert pooled_app.test_client().get("/readyz").status_code == 200
    assert "timeout" not in capsys.readouterr().err
