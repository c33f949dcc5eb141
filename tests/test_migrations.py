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
# they run on a direct connection, never through the pooler (docs/scaling.md: Behind PgBouncer).
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
        {"users", "user_transactions", "user_balances", "idempotency_keys", "api_keys", "credit_lots", "lot_postings",
         "ledger_events", "event_relays", "webhook_endpoints", "webhook_deliveries", "webhook_attempts",
         "transaction_metadata", "usage_rollup"},
        {"transaction_type", "transaction_status", "lot_category"},
    )
    with scratch_app.app_context():
        downgrade(revision="base")
    assert schema_objects(scratch_app) == (set(), set())
    with scratch_app.app_context():
        upgrade()
        upgrade()  # a second run is a no-op
    assert len(schema_objects(scratch_app)[0]) == 14


def test_models_and_migrations_agree(scratch_app):
    with scratch_app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
            differences = compare_metadata(context, db.metadata)
        db.engine.dispose()
    assert differences == []


CONSTRAINTS = """
    SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
    AND conrelid::regclass::text <> 'alembic_version'
"""
INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'alembic_version'"


def catalog(app):
    with app.app_context():
        with db.engine.connect() as connection:
            found = {
                "constraints": set(map(tuple, connection.execute(text(CONSTRAINTS)))),
                "indexes": set(map(tuple, connection.execute(text(INDEXES)))),
            }
        db.engine.dispose()
    return found


def test_migrated_constraints_and_indexes_are_the_models_and_all_validated(scratch_app, postgres):
    """What autogenerate does not compare: CHECK conditions, partial indexes' predicates, and that no
    constraint a migration added NOT VALID (to keep writes going) was left unvalidated."""
    with scratch_app.app_context():
        upgrade()
    migrated = catalog(scratch_app)
    url = postgres.create_database("tx_models")
    try:
        models_app = make_app(url)
        with models_app.app_context():
            db.create_all()
        built = catalog(models_app)
    finally:
        postgres.drop_database(url)
    assert [row for row in migrated["constraints"] if not row[3]] == []
    for kind in ("constraints", "indexes"):
        assert (sorted(migrated[kind] - built[kind]), sorted(built[kind] - migrated[kind])) == ([], [])


def test_idempotency_records_written_before_they_named_their_user_are_filled_in(scratch_app):
    with scratch_app.app_context():
        upgrade(revision="0002_hold_expiry")
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO users (id) VALUES ('5e1f0000-0000-4000-8000-000000000001')"))
            connection.execute(
                text(
                    "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
                    " VALUES ('01900000-0000-7000-8000-000000000001', '5e1f0000-0000-4000-8000-000000000001',"
                    " 'purchase', 9.99, 500, '500 credits', 'completed')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id)"
                    " VALUES ('payment-service', 'evt_1', 'x', 201, '{}', '01900000-0000-7000-8000-000000000001')"
                )
            )
        upgrade()
        with db.engine.connect() as connection:
            filled = connection.scalar(text("SELECT user_id::text FROM idempotency_keys WHERE key = 'evt_1'"))
        db.engine.dispose()
    assert filled == "5e1f0000-0000-4000-8000-000000000001"


def test_each_balance_becomes_one_paid_lot_with_its_holds_reserved_on_it(scratch_app):
    user, hold, purchase = (
        "5e1f0000-0000-4000-8000-000000000002", "01900000-0000-7000-8000-000000000003",
        "01900000-0000-7000-8000-000000000002",
    )
    with scratch_app.app_context():
        upgrade(revision="0004_api_keys")
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO users (id) VALUES (:u)"), {"u": user})
            connection.execute(
                text("INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status) VALUES"
                     " (:p, :u, 'purchase', 10.00, 500, 'Pack', 'completed'),"
                     " (:h, :u, 'usage', 0, -50, 'Upscale', 'pending')"),
                {"p": purchase, "h": hold, "u": user},
            )
            connection.execute(text("INSERT INTO user_balances (user_id, balance, held) VALUES (:u, 500, 50)"), {"u": user})
        upgrade()
        with db.engine.connect() as connection:
            lot = connection.execute(text(
                "SELECT category::text, credits, remaining, held, expires_at, cost_basis, transaction_id FROM credit_lots"
            )).one()
            rows = connection.execute(text(
                "SELECT transaction_id::text, credits, held, balance_after, held_after FROM lot_postings ORDER BY id"
            )).all()
        db.engine.dispose()
    assert (lot.category, lot.credits, lot.remaining, lot.held, lot.expires_at) == ("paid", 500, 450, 50, None)
    assert float(lot.cost_basis) == 0.02 and lot.transaction_id is None
    assert [tuple(row) for row in rows] == [(None, 500, 0, 500, 0), (hold, 0, 50, 500, 50)]
    client = scratch_app.test_client()
    with scratch_app.app_context():
        from transactions_service import api_keys

        key = api_keys.create("migrated", ["usage:write", "transactions:read"]).key
    settled = client.patch(f"/api/transactions/{hold}", json={"status": "completed"}, headers={"Authorization": f"Bearer {key}"})
    assert settled.status_code == 200, settled.json
    balance = client.get(f"/api/balance?user_id={user}", headers={"Authorization": f"Bearer {key}"}).json
    assert (balance["balance"], balance["held"], balance["paid"]) == (450, 0, 450)
    with scratch_app.app_context():
        db.engine.dispose()
