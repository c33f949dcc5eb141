"""History from a streaming replica (DATABASE_READ_URL); writes, balances and single reads on the primary.

The replica is a real hot standby of the session's embedded PostgreSQL, made
with the wheel's ``pg_basebackup``. Pausing its WAL replay freezes what it
shows, which tells apart what the service reads from the replica and what it
reads from the primary.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from transactions_service.scopes import SERVICE_SCOPES
from transactions_service.config import ConfigError
from devtools.devdb import FAST_UNSAFE_SETTINGS, EmbeddedPostgres, wait_for_replay
from transactions_service.extensions import db
from transactions_service.replica import read_replica

from .conftest import ContractClient, make_app
from .helpers import Api, bearer, totals, without_postings

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("TEST_DATABASE_URL")),
    reason="the replica is a base backup of the embedded test server; TEST_DATABASE_URL names an external one",
)

RETRY_SECONDS = 1


@pytest.fixture(scope="module")
def replica_server(direct_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    # Copied and streamed from PostgreSQL itself: the replication protocol does not go through PgBouncer.
    server = EmbeddedPostgres(tmp_path_factory.mktemp("replica"), settings=FAST_UNSAFE_SETTINGS)
    server.start_replica_of(direct_database_url)
    yield server
    server.destroy()


@pytest.fixture
def replica_url(replica_server: EmbeddedPostgres, direct_database_url: str) -> Iterator[str]:
    replica_server.start()  # running again if a test stopped it
    url = replica_server.url(make_url(direct_database_url).database)
    wait_for_replay(direct_database_url, url)
    yield url
    if replica_server.is_running():
        _replica_sql(url, "SELECT pg_wal_replay_resume()")


@pytest.fixture
def replica_app(app: Flask, database_url: str, replica_url: str) -> Iterator[Flask]:
    # Depends on ``app`` so that the tables are emptied after the test, as for every other test.
    application = make_app(database_url, DATABASE_READ_URL=replica_url, DATABASE_READ_RETRY_SECONDS=RETRY_SECONDS)
    application.test_client_class = ContractClient
    yield application
    with application.app_context():
        for engine in db.engines.values():  # the replica's among them
            engine.dispose()


@pytest.fixture
def api(replica_app: Flask, service_token: Callable[..., str], user_token: Callable[..., str]) -> Api:
    return Api(replica_app.test_client(), service_token(*sorted(SERVICE_SCOPES), name="ledger-admin"), user_token)


def _replica_sql(url: str, sql: str) -> Any:
    connection = psycopg2.connect(url.replace("+psycopg2", ""))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0] if cursor.description else None
    finally:
        connection.close()


@contextmanager
def replay_paused(replica_url: str) -> Iterator[None]:
    """The replica keeps answering, but shows the database as it was when this began."""
    _replica_sql(replica_url, "SELECT pg_wal_replay_pause()")
    while _replica_sql(replica_url, "SELECT pg_get_wal_replay_pause_state()") != "paused":
        time.sleep(0.01)
    try:
        yield
    finally:
        _replica_sql(replica_url, "SELECT pg_wal_replay_resume()")


def history_credits(api: Api, user_id: uuid.UUID) -> list[int]:
    response = api.history(user_id)
    assert response.status_code == 200, response.json
    return [row["credits"] for row in response.json["data"]]


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_history_is_read_from_the_replica_and_converges_after_a_write(api, direct_database_url, replica_url):
    user_id = api.funded_user(1000)
    wait_for_replay(direct_database_url, replica_url)
    with replay_paused(replica_url):
        assert api.usage(user_id, credits=-300, status="completed").status_code == 201
        assert history_credits(api, user_id) == [1000]
    assert eventually(lambda: history_credits(api, user_id) == [-300, 1000])


def test_balance_and_a_transaction_just_written_are_read_from_the_primary(api, replica_url):
    user_id = api.funded_user(1000)
    with replay_paused(replica_url):
        hold = api.usage(user_id, credits=-300, status="pending")
        assert hold.status_code == 201
        assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 1000, "held": 300, "available": 700}
        read_back = api.client.get(f"/api/transactions/{hold.json['id']}", headers=bearer(api.admin_token))
        assert read_back.status_code == 200
        assert without_postings(read_back.json) == hold.json
        assert api.settle(hold.json["id"], "completed").json["status"] == "completed"
        assert api.balance(user_id)["available"] == 700
        assert api.usage(user_id, credits=-701).json["code"] == "insufficient_credits"


def test_readiness_reports_the_replica(api):
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ok", "database": "ok", "replica": "ok"}


def test_with_the_replica_down_writes_and_history_are_served_by_the_primary(
    api, replica_app, replica_server, direct_database_url, replica_url
):
    user_id = api.funded_user(1000)
    wait_for_replay(direct_database_url, replica_url)
    assert history_credits(api, user_id) == [1000]  # the pool now holds a connection to the replica
    replica_server.stop()
    assert api.usage(user_id, credits=-300, status="completed").status_code == 201
    assert history_credits(api, user_id) == [-300, 1000]
    assert read_replica(replica_app).in_use is False  # the next requests do not try it again
    assert history_credits(api, user_id) == [-300, 1000]
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ok", "database": "ok", "replica": "unavailable"}


def test_history_returns_to_the_replica_once_it_is_back(api, replica_server, direct_database_url, replica_url):
    user_id = api.funded_user(1000)
    replica_server.stop()
    assert history_credits(api, user_id) == [1000]  # from the primary; the replica is skipped for a while
    replica_server.start()
    wait_for_replay(direct_database_url, replica_url)
    with replay_paused(replica_url):
        assert api.usage(user_id, credits=-200, status="completed").status_code == 201
        time.sleep(RETRY_SECONDS)
        assert history_credits(api, user_id) == [1000]  # stale: read from the replica again


def test_read_url_must_be_postgresql(database_url):
    with pytest.raises(ConfigError, match="DATABASE_READ_URL"):
        make_app(database_url, DATABASE_READ_URL="mysql://replica.internal/ledger")
