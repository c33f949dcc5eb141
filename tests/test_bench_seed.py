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
    assert output.count("  ok    ") == 7 and "FAIL" not in output
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


def test_the_check_finds_a_balance_that_disagrees_with_the_ledger(app):
    seeded(app)
    with app.app_context():
        db.session.execute(text("UPDATE user_balances SET balance = balance + 1 WHERE user_id = :u"), {"u": HEAVY})
        db.session.commit()
        connection = _connect()
        try:
            broken = dict(check_invariants(connection))
        finally:
            connection.close()
    assert sum(broken.values()) == 1
    result = seed(app, "--check")
    assert result.exit_code == 1 and "FAIL" in result.output


def test_seed_refuses_a_named_user_that_exists(app):
    seeded(app)
    result = seed(app, "--users", "1", "--transactions", "5", "--light-user", str(LIGHT), "--light-rows", "5")
    assert result.exit_code != 0
    assert "already exist" in result.output
