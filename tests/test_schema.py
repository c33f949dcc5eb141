"""The database guards the ledger's invariants itself."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError, DataError


@pytest.fixture
def user_id(db_session):
    identifier = uuid.uuid4()
    db_session.execute(text("INSERT INTO users (id) VALUES (:id)"), {"id": identifier})
    db_session.commit()
    return identifier


def insert_transaction(db_session, user_id, **overrides):
    values = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "type": "purchase",
        "amount": "9.99",
        "credits": 500,
        "description": "pack",
        "status": "completed",
        **overrides,
    }
    db_session.execute(
        text(
            "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status) "
            "VALUES (:id, :user_id, :type, :amount, :credits, :description, :status)"
        ),
        values,
    )
    db_session.commit()


def test_user_transactions_has_the_seed_columns(db_session):
    columns = {column["name"]: column for column in inspect(db_session.get_bind()).get_columns("user_transactions")}
    seed_columns = {"id", "user_id", "type", "amount", "credits", "description", "status", "created_at"}
    hold_columns = {"hold_expires_at", "failure_reason"}
    lot_terms = {"lot_expires_at", "lot_priority", "lot_category"}
    links = {"refunds", "reverses"}
    given_back = {"refunded_amount", "reversed_credits"}
    callers_own = {"metadata", "reference"}
    assert set(columns) == seed_columns | {"updated_at"} | hold_columns | lot_terms | links | given_back | callers_own
    assert not any(columns[name]["nullable"] for name in seed_columns | {"updated_at", "metadata"} | given_back)
    assert all(columns[name]["nullable"] for name in hold_columns | lot_terms | links | {"reference"})
    assert str(columns["amount"]["type"]) == "NUMERIC(12, 2)"
    assert str(columns["credits"]["type"]) == "INTEGER"
    assert str(columns["created_at"]["type"]) == "TIMESTAMP"
    assert columns["created_at"]["type"].timezone is True


def test_enums_have_exactly_the_ledger_values(db_session):
    rows = db_session.execute(
        text(
            "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
            "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname"
        )
    ).all()
    assert dict(rows) == {
        # in the order the migrations added them
        "transaction_type": ["purchase", "usage", "grant", "expiration", "refund", "reversal", "adjustment"],
        "transaction_status": ["completed", "pending", "failed"],
        "lot_category": ["paid", "promotional"],
    }


def test_history_index_is_newest_first_per_user(db_session):
    definition = db_session.scalar(
        text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_user_transactions_history'")
    )
    assert "(user_id, created_at DESC, id DESC)" in definition


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": "purchase", "credits": -1},
        {"type": "purchase", "credits": 0},
        {"type": "usage", "credits": 5},
        {"amount": "-0.01"},
        {"description": ""},
        {"description": "x" * 501},
        {"credits": 1_000_000_001},
    ],
)
def test_check_constraints_reject_impossible_rows(db_session, user_id, overrides):
    with pytest.raises(IntegrityError):
        insert_transaction(db_session, user_id, **overrides)
    db_session.rollback()


def test_unknown_enum_value_is_rejected(db_session, user_id):
    with pytest.raises(DataError):
        insert_transaction(db_session, user_id, status="refunded")
    db_session.rollback()


def test_foreign_key_requires_a_registered_user(db_session):
    with pytest.raises(IntegrityError):
        insert_transaction(db_session, uuid.uuid4())
    db_session.rollback()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO user_balances (user_id, balance) VALUES (:id, -1)",
        "INSERT INTO user_balances (user_id, balance, held) VALUES (:id, 10, 11)",
        "INSERT INTO user_balances (user_id, balance, held) VALUES (:id, 10, -1)",
    ],
)
def test_balance_checks_forbid_negative_available_credits(db_session, user_id, statement):
    with pytest.raises(IntegrityError):
        db_session.execute(text(statement), {"id": user_id})
        db_session.commit()
    db_session.rollback()


def test_no_update_can_overdraw_a_balance(db_session, user_id):
    db_session.execute(text("INSERT INTO user_balances (user_id, balance, held) VALUES (:id, 10, 5)"), {"id": user_id})
    db_session.commit()
    with pytest.raises(IntegrityError):
        db_session.execute(text("UPDATE user_balances SET balance = balance - 6 WHERE user_id = :id"), {"id": user_id})
        db_session.commit()
    db_session.rollback()
