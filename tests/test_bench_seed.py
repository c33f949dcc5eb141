"""``python -m bench.seed``: a realistic history that keeps the ledger's invariants."""

from __future__ import annotations

import uuid

from click.testing import CliRunner
from sqlalchemy import text

from bench.seed import _connect, check_invariants, main
from transactions_service.extensions import db

from .conftest import TEST_SECRET

HEAVY = uuid.UUID("0b3c1e52-5d1f-4c57-9c1a-3f4f9d6f2a01")
LIGHT = uuid.UUID("0b3c1e52-5d1f-4c57-9c1a-3f4f9d6f2a02")


def seed(app, *args):
    """Run the seed as `python -m bench.seed` runs it: an app of its own, from the environment."""
    environment = {"DATABASE_URL": app.config["DATABASE_URL"], "JWT_SECRET_KEY": TEST_SECRET}
    return CliRunner().invoke(main, list(args), env=environment)


def seeded(app):
    result = seed(app, "--users", "60", "--transactions", "2000", "--heavy-user", str(HEAVY), "--heavy-rows", "600",
                  "--light-user", str(LIGHT), "--light-rows", "10")
    assert result.exit_code == 0, result.output
    return result


def scalar(app, sql, **params):
    with app.app_context():
        return db.session.execute(text(sql), params).scalar()


def test_seed_loads_the_rows_asked_for_and_reports_every_invariant_ok(app):
    output = seeded(app).output
    assert "loaded 2,000 transactions for 60 users" in output
    assert output.count("  ok    ") == 12 and "FAIL" not in output
    assert scalar(app, "SELECT count(*) FROM user_transactions") == 2000
    assert scalar(app, "SELECT count(*) FROM users") == 60
    assert scalar(app, "SELECT count(*) FROM user_transactions WHERE user_id = :u", u=HEAVY) == 600
    assert scalar(app, "SELECT count(*) FROM user_transactions WHERE user_id = :u", u=LIGHT) == 10


def test_seeded_history_is_mixed_and_spread_over_two_years(app):
    seeded(app)
    kinds = scalar(app, "SELECT count(DISTINCT (type, status)) FROM user_transactions")
    days = scalar(app, "SELECT extract(day FROM max(created_at) - min(created_at)) FROM user_transactions")
    assert kinds >= 4  # purchases and usage, completed, failed and pending
    assert scalar(app, "SELECT count(*) FROM user_transactions WHERE status = 'pending'") >= 3
    assert 600 <= days <= 730


def test_seeded_balances_are_what_the_api_reports(app, api):
    seeded(app)
    expected = scalar(app, "SELECT sum(credits) FROM user_transactions WHERE user_id = :u AND status = 'completed'", u=HEAVY)
    assert api.balance(HEAVY)["balance"] == expected


def broken_after(app, *statements):
    """The invariants broken (with their counts) once ``statements`` have run on the seeded ledger."""
    with app.app_context():
        for statement in statements:
            db.session.execute(text(statement), {"u": HEAVY})
        db.session.commit()
        connection = _connect()
        try:
            return {description: count for description, count in check_invariants(connection) if count}
        finally:
            connection.close()


def test_the_check_finds_a_balance_that_disagrees_with_the_ledger_and_the_lots(app):
    seeded(app)
    broken = broken_after(app, "UPDATE user_balances SET balance = balance + 1 WHERE user_id = :u")
    assert broken == {
        "balance = sum of completed credits and held = credits of pending usage, for every user": 1,
        "balance = the lots' remaining + held and held = the lots' held, for every user": 1,
    }
    result = seed(app, "--check")
    assert result.exit_code == 1 and "FAIL" in result.output


def test_the_check_finds_a_spend_that_left_the_lots_untouched(app):
    seeded(app)
    broken = broken_after(
        app,
        "UPDATE user_balances SET balance = balance - 1 WHERE user_id = :u",
        "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
        " VALUES (uuidv7(), :u, 'usage', 0, -1, 'Image generation (1024x1024)', 'completed')",
    )
    assert broken == {"balance = the lots' remaining + held and held = the lots' held, for every user": 1}


def test_the_check_finds_a_lot_that_disagrees_with_its_postings(app):
    seeded(app)
    broken = broken_after(
        app,
        "UPDATE credit_lots SET remaining = remaining - 1 WHERE user_id = :u",
        "UPDATE user_balances SET balance = balance - 1 WHERE user_id = :u",
        "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
        " VALUES (uuidv7(), :u, 'usage', 0, -1, 'Image generation (1024x1024)', 'completed')",
    )
    assert broken == {"every lot's remaining + held = its postings' credits and its held = their held": 1}


def test_seed_refuses_a_named_user_that_exists(app):
    seeded(app)
    result = seed(app, "--users", "1", "--transactions", "5", "--light-user", str(LIGHT), "--light-rows", "5")
    assert result.exit_code != 0
    assert "already exist" in result.output
