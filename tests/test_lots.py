"""Credit lots: purchases and grants make lots, debits take from them in spend order, and a lot's
expiry takes its unheld credits out of every read and spend at once, recorded exactly once."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from sqlalchemy import func, text, update
from sqlalchemy.exc import DBAPIError

from transactions_service.ledger.models import CreditLot
from transactions_service.scopes import SERVICE_SCOPES

from .helpers import bearer, lapse, write_at


@pytest.fixture
def granter(service_token):
    return service_token("credits:grant", "usage:write", "transactions:read", name="growth-service")


def grant(api, user_id, credits, token, **fields):
    fields.setdefault("description", f"{credits} free credits")
    return api.create(token=token, user_id=user_id, type="grant", credits=credits, **fields)


def lots(api, user_id, status="all"):
    response = api.client.get(f"/api/lots?user_id={user_id}&status={status}&limit=100", headers=bearer(api.admin_token))
    assert response.status_code == 200, response.json
    return response.json["data"]


def lot_of(api, user_id, transaction_id):
    (lot,) = [lot for lot in lots(api, user_id) if lot["transaction_id"] == transaction_id]
    return lot


def postings(api, transaction_id):
    response = api.client.get(f"/api/transactions/{transaction_id}", headers=bearer(api.admin_token))
    return response.json["postings"]


def expire_now(db_session, transaction_id):
    """Make the lot a purchase or grant made expire now: what was taken from it before stays taken."""
    db_session.execute(
        update(CreditLot).where(CreditLot.transaction_id == uuid.UUID(transaction_id))
        .values(expires_at=func.clock_timestamp())
    )
    db_session.commit()


# --- lots and their terms ---------------------------------------------------------------------


def test_a_purchase_makes_a_paid_lot_with_its_cost_per_credit(api):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="9.99").json
    lot = lot_of(api, user_id, purchase["id"])
    assert (lot["category"], lot["credits"], lot["remaining"], lot["held"]) == ("paid", 500, 500, 0)
    assert (lot["priority"], lot["expires_at"], lot["status"]) == (50, None, "active")
    assert lot["cost_basis"] == "0.01998"
    assert postings(api, purchase["id"]) == [
        {"lot_id": lot["id"], "credits": 500, "held": 0, "created_at": lot["created_at"]}
    ]


def test_a_grant_makes_a_free_promotional_lot(api, granter):
    user_id = api.register()
    response = grant(api, user_id, 100, granter, expires_in=30 * 86400)
    assert response.status_code == 201, response.json
    assert (response.json["type"], response.json["amount"], response.json["status"]) == ("grant", "0.00", "completed")
    lot = lot_of(api, user_id, response.json["id"])
    assert (lot["category"], lot["cost_basis"], lot["remaining"]) == ("promotional", "0", 100)
    expires = datetime.fromisoformat(lot["expires_at"]) - datetime.fromisoformat(lot["created_at"])
    assert timedelta(days=30) - timedelta(seconds=5) < expires <= timedelta(days=30)
    balance = api.balance(user_id)
    assert (balance["balance"], balance["paid"], balance["promotional"]) == (100, 0, 100)
    assert balance["next_expiry"] == {"credits": 100, "expires_at": lot["expires_at"]}


def test_a_pending_purchase_makes_its_lot_when_it_completes_with_the_terms_it_was_recorded_with(api):
    user_id = api.register()
    pending = api.purchase(user_id, credits=300, status="pending", priority=10, expires_in=3600).json
    assert lots(api, user_id) == []
    api.settle(pending["id"], "completed")
    lot = lot_of(api, user_id, pending["id"])
    assert (lot["priority"], lot["remaining"]) == (10, 300) and lot["expires_at"] is not None


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"type": "grant", "credits": 0}, "credits"),
        ({"type": "grant", "credits": -5}, "credits"),
        ({"type": "grant", "amount": "1.00"}, "amount"),
        ({"type": "grant", "status": "pending"}, "status"),
        ({"type": "grant", "priority": 101}, "priority"),
        ({"type": "grant", "priority": -1}, "priority"),
        ({"type": "grant", "expires_in": 0}, "expires_in"),
        ({"type": "grant", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"type": "grant", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({"type": "grant", "expires_at": "2999-01-01T00:00:00Z", "expires_in": 60}, "expires_in"),
        ({"type": "purchase", "amount": "1", "category": "promotional"}, "category"),
        ({"type": "usage", "amount": "0", "credits": -1, "priority": 1}, "priority"),
        ({"type": "usage", "amount": "0", "credits": -1, "expires_in": 60}, "expires_in"),
        ({"type": "expiration", "amount": "0", "credits": -1}, "type"),
        ({"type": "purchase"}, "amount"),
    ],
)
def test_invalid_lot_terms_are_422_and_write_nothing(api, db_session, fields, field):
    user_id = api.funded_user(100)
    body = {"credits": 10, "description": "x", **fields}
    response = api.create(user_id=user_id, **body)
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]
    assert db_session.execute(text("SELECT count(*) FROM credit_lots")).scalar() == 1


def test_only_a_key_with_credits_grant_may_grant(api, service_token):
    user_id = api.register()
    for scopes in [("purchases:write",), ("usage:write", "transactions:read"), tuple(SERVICE_SCOPES - {"credits:grant"})]:
        response = grant(api, user_id, 100, service_token(*scopes))
        assert response.status_code == 403 and response.json["code"] == "insufficient_scope"
    assert api.balance(user_id)["balance"] == 0


# --- spend order -----------------------------------------------------------------------------------


def test_debits_take_lower_priority_then_sooner_expiry_then_promotional_then_older_first(api, granter):
    user_id = api.register()
    paid_old = api.purchase(user_id, credits=10, amount="1").json["id"]
    paid_new = api.purchase(user_id, credits=10, amount="1").json["id"]
    promo_never = grant(api, user_id, 10, granter).json["id"]
    promo_late = grant(api, user_id, 10, granter, expires_in=7200).json["id"]
    paid_soon = api.purchase(user_id, credits=10, amount="1", expires_in=3600).json["id"]
    urgent = grant(api, user_id, 10, granter, priority=0, expires_in=9000).json["id"]
    order = []
    for _ in range(6):
        spend = api.usage(user_id, credits=-10).json
        (posting,) = postings(api, spend["id"])
        order.append(next(lot["transaction_id"] for lot in lots(api, user_id) if lot["id"] == posting["lot_id"]))
    assert order == [urgent, paid_soon, promo_late, promo_never, paid_old, paid_new]


def test_a_debit_spanning_lots_writes_a_posting_per_lot_with_the_balance_after_each(api, granter, db_session):
    user_id = api.register()
    first = grant(api, user_id, 30, granter, expires_in=600).json["id"]
    second = api.purchase(user_id, credits=100, amount="5").json["id"]
    spend = api.usage(user_id, credits=-50).json
    by_lot = {lot["id"]: lot for lot in lots(api, user_id)}
    rows = db_session.execute(
        text("SELECT lot_id::text, credits, held, balance_after, held_after FROM lot_postings"
             " WHERE transaction_id = :id ORDER BY id"), {"id": spend["id"]}
    ).all()
    assert [(by_lot[lot]["transaction_id"], credits, held, after, held_after) for lot, credits, held, after, held_after in rows] == [
        (first, -30, 0, 100, 0), (second, -20, 0, 80, 0)
    ]
    assert (by_lot[rows[0][0]]["remaining"], by_lot[rows[1][0]]["remaining"]) == (0, 80)


def test_a_hold_reserves_specific_lots_and_completing_it_consumes_exactly_those(api, granter):
    user_id = api.register()
    promo = grant(api, user_id, 20, granter, expires_in=600).json["id"]
    paid = api.purchase(user_id, credits=100, amount="5").json["id"]
    hold = api.usage(user_id, credits=-30, status="pending").json
    assert sorted((p["credits"], p["held"]) for p in postings(api, hold["id"])) == [(0, 10), (0, 20)]
    assert (lot_of(api, user_id, promo)["held"], lot_of(api, user_id, paid)["held"]) == (20, 10)
    assert grant(api, user_id, 50, granter, priority=0).status_code == 201  # spent first now, but the hold keeps its lots
    api.settle(hold["id"], "completed")
    assert (lot_of(api, user_id, promo)["remaining"], lot_of(api, user_id, promo)["held"]) == (0, 0)
    assert (lot_of(api, user_id, paid)["remaining"], lot_of(api, user_id, paid)["held"]) == (90, 0)
    assert sorted((p["credits"], p["held"]) for p in postings(api, hold["id"]))[:2] == [(-20, -20), (-10, -10)]
    balance = api.balance(user_id)
    assert (balance["balance"], balance["held"], balance["available"]) == (140, 0, 140)


def test_failing_a_hold_releases_its_credits_to_the_lots_they_came_from(api, granter):
    user_id = api.register()
    promo = grant(api, user_id, 20, granter, expires_in=600).json["id"]
    hold = api.usage(user_id, credits=-15, status="pending").json
    api.settle(hold["id"], "failed")
    assert (lot_of(api, user_id, promo)["remaining"], lot_of(api, user_id, promo)["held"]) == (20, 0)
    assert api.balance(user_id)["available"] == 20


# --- expiry ------------------------------------------------------------------------------------------


def test_an_expired_lot_leaves_every_read_at_once_and_cannot_be_spent(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 100, granter, expires_in=3600).json["id"]
    api.purchase(user_id, credits=50, amount="2")
    expire_now(db_session, promo)
    balance = api.balance(user_id)
    assert (balance["balance"], balance["available"], balance["promotional"], balance["paid"]) == (50, 50, 0, 50)
    assert balance["next_expiry"] is None
    refused = api.usage(user_id, credits=-60, token=granter)
    assert refused.status_code == 409 and "has 50 available" in refused.json["detail"]


def test_the_next_write_records_the_expiry_once(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 100, granter, expires_in=3600).json["id"]
    api.purchase(user_id, credits=50, amount="2")
    expire_now(db_session, promo)
    spend = api.usage(user_id, credits=-10)
    assert spend.status_code == 201
    (paid_posting,) = postings(api, spend.json["id"])
    history = api.history(user_id).json["data"]
    expirations = [row for row in history if row["type"] == "expiration"]
    assert len(expirations) == 1
    assert (expirations[0]["credits"], expirations[0]["status"]) == (-100, "completed")
    assert expirations[0]["description"] == "100 promotional credits expired"
    assert lot_of(api, user_id, promo)["status"] == "expired" and lot_of(api, user_id, promo)["remaining"] == 0
    api.usage(user_id, credits=-10)
    assert len([row for row in api.history(user_id).json["data"] if row["type"] == "expiration"]) == 1
    balance = api.balance(user_id)
    assert (balance["balance"], balance["available"]) == (30, 30)
    assert db_session.execute(text("SELECT balance FROM user_balances WHERE user_id = :u"), {"u": user_id}).scalar() == 30


def test_the_expire_job_records_lapsed_lots_exactly_once(app, api, granter, db_session):
    users = [api.register() for _ in range(3)]
    grants = [grant(api, user, 40, granter, expires_in=3600).json["id"] for user in users]
    for transaction_id in grants:
        expire_now(db_session, transaction_id)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["transactions", "expire"])
    assert result.exit_code == 0 and "expired 3 lots" in result.output
    assert "expired 0 lots" in runner.invoke(args=["transactions", "expire"]).output
    for user in users:
        assert api.balance(user)["balance"] == 0
        assert [row["type"] for row in api.history(user).json["data"]] == ["expiration", "grant"]


def test_a_lot_expiring_while_held_keeps_its_held_part_until_the_hold_ends(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 100, granter, expires_in=3600).json["id"]
    hold = api.usage(user_id, credits=-30, status="pending").json
    expire_now(db_session, promo)
    balance = api.balance(user_id)
    assert (balance["balance"], balance["held"], balance["available"]) == (30, 30, 0)
    assert api.settle(hold["id"], "completed").status_code == 200
    lot = lot_of(api, user_id, promo)
    assert (lot["remaining"], lot["held"], lot["status"]) == (0, 0, "expired")
    balance = api.balance(user_id)
    assert (balance["balance"], balance["held"]) == (0, 0)


def test_a_hold_released_after_its_lot_expired_expires_with_it(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 100, granter, expires_in=3600).json["id"]
    hold = api.usage(user_id, credits=-30, status="pending").json
    expire_now(db_session, promo)
    assert api.balance(user_id)["available"] == 0
    assert api.settle(hold["id"], "failed").status_code == 200
    balance = api.balance(user_id)
    assert (balance["balance"], balance["held"], balance["available"]) == (0, 0, 0)
    # The settlement is the first write since the lot lapsed: it records the expiry of all 100.
    expirations = [row["credits"] for row in api.history(user_id).json["data"] if row["type"] == "expiration"]
    assert expirations == [-100]


def test_a_lapsed_hold_on_an_expired_lot_counts_as_gone_in_reads(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 100, granter, expires_in=3600).json["id"]
    hold = api.usage(user_id, credits=-30, status="pending").json
    expire_now(db_session, promo)
    lapse(db_session, hold["id"])
    balance = api.balance(user_id)
    assert (balance["balance"], balance["held"], balance["available"]) == (0, 0, 0)


# --- reading lots ---------------------------------------------------------------------------------------


def test_lots_are_listed_newest_first_in_pages_and_active_by_default(api, granter, db_session):
    user_id = api.register()
    made = [grant(api, user_id, 10 + i, granter, expires_in=3600).json["id"] for i in range(5)]
    expire_now(db_session, made[0])
    spent = api.usage(user_id, credits=-11).json  # takes the soonest: all expire together, so the oldest: made[1]
    assert spent
    active = lots(api, user_id, status="active")
    assert [lot["transaction_id"] for lot in active] == list(reversed(made[2:]))
    pages, cursor = [], None
    while True:
        query = f"/api/lots?user_id={user_id}&status=all&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.client.get(query, headers=bearer(api.admin_token)).json
        pages.append([lot["transaction_id"] for lot in page["data"]])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert pages == [[made[4], made[3]], [made[2], made[1]], [made[0]]]
    statuses = {lot["transaction_id"]: lot["status"] for lot in lots(api, user_id)}
    assert (statuses[made[0]], statuses[made[1]], statuses[made[2]]) == ("expired", "depleted", "active")


def test_a_user_reads_only_their_own_lots(api, user_token):
    owner, stranger = api.funded_user(100), api.register()
    own = api.client.get("/api/lots", headers=bearer(user_token(owner)))
    assert own.status_code == 200 and len(own.json["data"]) == 1
    response = api.client.get(f"/api/lots?user_id={owner}", headers=bearer(user_token(stranger)))
    assert response.status_code == 403


# --- postings are append-only -----------------------------------------------------------------------------


@pytest.mark.parametrize("statement", ["UPDATE lot_postings SET credits = credits + 1", "DELETE FROM lot_postings"])
def test_postings_can_be_neither_updated_nor_deleted(api, db_session, statement):
    api.funded_user(100)
    with pytest.raises(DBAPIError, match="append-only"):
        db_session.execute(text(statement))
    db_session.rollback()


# --- concurrency -------------------------------------------------------------------------------------------


def test_a_write_stamped_after_a_lots_expiry_cannot_spend_from_it(app, api, db_session):
    """A user's postings are stamped no earlier than their latest. A write whose own clock reads before
    a lot's expiry, but that lands after a write stamped past it, is stamped past it too; so it must
    judge the lot expired, as its postings will say it was."""
    user_id = api.register()
    start = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    promo = write_at(app, user_id, start, "grant", 100)
    bought = write_at(app, user_id, start + timedelta(hours=2), "purchase", 100, amount="1.00")
    db_session.execute(update(CreditLot).where(CreditLot.transaction_id == uuid.UUID(promo.id))
                       .values(expires_at=start + timedelta(hours=1)))
    db_session.commit()
    spent = write_at(app, user_id, start + timedelta(minutes=30), "usage", -10)
    taken = [(posting["lot_id"], posting["credits"]) for posting in postings(api, spent.id)]
    assert taken == [(lot_of(api, user_id, bought.id)["id"], -10)]


@pytest.mark.slow
def test_fifty_spends_racing_the_expiry_of_their_lot_never_spend_expired_credits(api, live_server, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 500, granter, expires_in=3600).json["id"]
    api.purchase(user_id, credits=100, amount="5")
    barrier = threading.Barrier(51)
    statuses = []

    def spend(index):
        barrier.wait()
        body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": f"s{index}"}
        statuses.append(requests.post(f"{live_server}/api/transactions", json=body,
                                      headers=bearer(api.admin_token), timeout=30).status_code)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    barrier.wait()
    expire_now(db_session, promo)  # the promotional lot lapses while the spends run
    for thread in threads:
        thread.join()
    assert set(statuses) <= {201, 409}
    check = db_session.execute(text(
        "SELECT (SELECT balance FROM user_balances WHERE user_id = :u),"
        " (SELECT coalesce(sum(remaining + held), 0) FROM credit_lots WHERE user_id = :u),"
        " (SELECT coalesce(sum(credits), 0) FROM lot_postings WHERE user_id = :u),"
        " (SELECT coalesce(sum(credits), 0) FROM user_transactions WHERE user_id = :u AND status = 'completed'),"
        " (SELECT count(*) FROM lot_postings p JOIN credit_lots l ON l.id = p.lot_id JOIN user_transactions t"
        "   ON t.id = p.transaction_id WHERE p.user_id = :u AND t.type = 'usage' AND p.created_at >= l.expires_at)"
    ), {"u": user_id}).one()
    balance, in_lots, in_postings, completed, spent_after_expiry = check
    assert balance == in_lots == in_postings == completed
    assert spent_after_expiry == 0


def test_a_write_a_lots_check_refused_is_tried_again_and_recorded_once(api, monkeypatch, db_session):
    """A statement that planned from a lot as it no longer was fails on the lot's CHECK, writing nothing;
    the write is then tried again instead of failing the request (seen once under injected faults)."""
    from sqlalchemy.exc import IntegrityError

    from transactions_service.ledger import store

    class Refused(Exception):
        class diag:  # noqa: N801 - the shape of psycopg2's error
            constraint_name = "ck_credit_lots_remaining_not_negative"

    user_id = api.funded_user(100)
    real, refusals = store.record, []

    def refused_once(*args, **kwargs):
        if not refusals:
            refusals.append(1)
            raise IntegrityError("WITH ...", {}, Refused())
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "record", refused_once)
    spend = api.usage(user_id, credits=-30)
    assert spend.status_code == 201, spend.json
    assert refusals == [1]
    assert api.balance(user_id)["available"] == 70
    assert db_session.execute(text("SELECT count(*) FROM user_transactions WHERE type = 'usage'")).scalar() == 1
