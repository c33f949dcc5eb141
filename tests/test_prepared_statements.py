"""Statements run as prepared statements on direct connections: planned once per connection, recovered
when the session loses them, and not used when DATABASE_PREPARED_STATEMENTS is off."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from transactions_service.extensions import _prepared, run_statement

from .conftest import make_app

pytestmark = pytest.mark.direct_only(reason="prepared statements live on a server connection of the client's own")

COUNT = "SELECT count(*) FROM users WHERE id = %(id)s OR id = %(id)s OR created_at > %(since)s"
PREPARED_HERE = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'ledger%%'"


@pytest.fixture
def one_connection(database_url):
    """An engine of a single connection, so that every statement meets what the previous ones prepared."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def test_a_statement_names_each_parameter_once_and_keeps_literal_percent_signs():
    form = _prepared(COUNT + " AND 'a%%' LIKE 'a%%'")
    assert form.prepare.endswith("WHERE id = $1 OR id = $1 OR created_at > $2 AND 'a%' LIKE 'a%'")
    assert form.execute == f"EXECUTE {form.name}(%(id)s, %(since)s)"
    assert _prepared(COUNT).name == _prepared(COUNT).name != form.name


def test_a_statement_is_prepared_once_per_connection(app, one_connection):
    params = {"id": "7b0d3c1e-0000-4000-8000-000000000000", "since": "2999-01-01T00:00:00Z"}
    with app.app_context():
        assert app.config["DATABASE_PREPARED_STATEMENTS"] is True
        for _ in range(3):
            assert run_statement(COUNT, params, one_connection) == [(0,)]
        # this statement prepares itself too, and sees its own: two prepared on the one connection
        assert run_statement(PREPARED_HERE, {}, one_connection) == [(2,)]


def test_statements_the_session_lost_are_prepared_again(app, one_connection):
    params = {"id": "7b0d3c1e-0000-4000-8000-000000000000", "since": "2999-01-01T00:00:00Z"}
    with app.app_context():
        run_statement(COUNT, params, one_connection)
        connection = one_connection.raw_connection()
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        connection.close()
        assert run_statement(COUNT, params, one_connection) == [(0,)]


def test_with_the_setting_off_nothing_is_prepared(database_url, one_connection):
    app = make_app(database_url, DATABASE_PREPARED_STATEMENTS=False)
    with app.app_context():
        run_statement(COUNT, {"id": "7b0d3c1e-0000-4000-8000-000000000000", "since": "2999-01-01"}, one_connection)
        assert run_statement(PREPARED_HERE, {}, one_connection) == [(0,)]


def test_behind_a_pooler_the_default_is_off(database_url):
    assert make_app(database_url, DATABASE_CONNECT_OPTIONS=False).config["DATABASE_PREPARED_STATEMENTS"] is False
    assert make_app(database_url).config["DATABASE_PREPARED_STATEMENTS"] is True
