"""Migrations build the schema the models describe, and undo it."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from transactions_service.extensions import db

from .conftest import make_app

# Migrations set a session-level statement_timeout and build indexes CONCURRENTLY outside a transaction:
# they run on a direct connection, never through the pooler (README: PgBouncer).
pytestmark = pytest.mark.direct_only(reason="migrations run on a direct connection to PostgreSQL")


@pytest.fixture
def scratch_app(postgres):
    url = postgres.create_database("tx_migrations")
    app = make_app(url)
    yield app
    with app.app_context():
        db.engine.dispose()
    postgres.drop_database(url)


def schema_objects(app):
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
        with db.engine.connect() as connection:
            enums = set(connection.scalars(text("SELECT typname FROM pg_type WHERE typtype = 'e'")))
        db.engine.dispose()
    return tables, enums


def test_upgrade_downgrade_upgrade_from_an_empty_database(scratch_app):
    with scratch_app.app_context():
        upgrade()
    assert schema_objects(scratch_app) == (
        {"users", "user_transactions", "user_balances", "idempotency_keys"},
        {"transaction_type", "transaction_status"},
    )
    with scratch_app.app_context():
        downgrade(revision="base")
    assert schema_objects(scratch_app) == (set(), set())
    with scratch_app.app_context():
        upgrade()
        upgrade()  # a second run is a no-op
    assert len(schema_objects(scratch_app)[0]) == 4


def test_models_and_migrations_agree(scratch_app):
    with scratch_app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
            differences = compare_metadata(context, db.metadata)
        db.engine.dispose()
    assert differences == []
