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
    assert output.count("  ok    ") == 14 and "FAIL" not in output
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


def test_seeded_usage_carries_its_model_and_the_metadata_index_finds_it(app, api):
    seeded(app)
    models = scalar(app, "SELECT count(DISTINCT metadata->>'model') FROM user_transactions WHERE type = 'usage'")
    unlabelled = scalar(app, "SELECT count(*) FROM user_transactions WHERE type = 'usage' AND metadata->>'model' IS NULL")
    assert models >= 4 and unlabelled == 0
    expected = scalar(app, "SELECT count(*) FROM user_transactions WHERE user_id = :u AND metadata->>'model' = 'quill'",
                      u=HEAVY)
    found = api.all_history(HEAVY, **{"metadata[model]": "quill", "limit": 100})
    assert len(found) == expected > 0 and {row["metadata"]["model"] for row in found} == {"quill"}


def test_seeded_purchases_are_found_by_their_reference(app, api):
    seeded(app)
    reference = scalar(app, "SELECT reference FROM user_transactions WHERE user_id = :u AND type = 'purchase'"
                            " ORDER BY created_at LIMIT 1", u=HEAVY)
    assert reference.startswith("cs_")
    page = api.history(HEAVY, reference=reference).json["data"]
    assert [row["reference"] for row in page] == [reference]


def test_seeded_rollup_gives_the_usage_summary_the_ledgers_credits_per_model(app, api):
    seeded(app)
    response = api.client.get("/api/usage/summary", headers={"Authorization": f"Bearer {api.admin_token}"},
                              query_string={"user_id": str(HEAVY), "granularity": "month", "from": "2020-01-01",
                                            "group_by": "metadata.model"})
    assert response.status_code == 200, response.json
    summary = response.json
    per_series = [sum(bucket["split"][i] for bucket in summary["buckets"]) for i in range(len(summary["series"]))]
    by_model = {series["name"]: credits for series, credits in zip(summary["series"], per_series)
                if series["kind"] == "value"}
    with app.app_context():
        ledger = dict(db.session.execute(text(
            "SELECT metadata->>'model', sum(-credits) FROM user_transactions WHERE user_id = :u AND type = 'usage'"
            " AND status = 'completed' GROUP BY 1"), {"u": HEAVY}).all())
    assert by_model == ledger and summary["total"] == sum(ledger.values()) > 0


def test_the_heavy_users_last_30_days_hold_more_than_a_uniform_share(app):
    seeded(app)
    share = scalar(app, "SELECT avg((created_at >= now() - interval '30 days')::int) FROM user_transactions"
                        " WHERE user_id = :u", u=HEAVY)
    assert 0.05 < share < 0.2  # about 8%: their use grew; a uniform spread over two years gives 4%


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
