"""Refunds, reversals and adjustments: credits given back to where they came from, never more than
there is to give back, however many requests race; and support's corrections either way."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
import requests
from sqlalchemy import text

from .helpers import bearer
from .test_lots import expire_now, grant, lot_of, lots, postings


@pytest.fixture
def granter(service_token):
    return service_token("credits:grant", "usage:write", "transactions:read", name="growth-service")


@pytest.fixture
def adjuster(service_token):
    return service_token("credits:adjust", "transactions:read", name="support-tools")


def refund(api, user_id, purchase_id, credits, amount, **fields):
    fields.setdefault("description", "Refund")
    return api.create(user_id=user_id, type="refund", refunds=purchase_id, credits=credits, amount=amount, **fields)


def reverse(api, user_id, usage_id, credits, **fields):
    fields.setdefault("description", "Generation failed: credits back")
    return api.create(user_id=user_id, type="reversal", reverses=usage_id, credits=credits, **fields)


def adjust(api, token, user_id, credits, **fields):
    fields.setdefault("description", "Support: ticket 4812")
    return api.create(token=token, user_id=user_id, type="adjustment", credits=credits, **fields)


def ledger_rows(db_session):
    return db_session.execute(text("SELECT count(*) FROM user_transactions")).scalar()


def consistent(db_session, user_id):
    """balance row = Σ lots = Σ postings = Σ completed credits, and held likewise; no lot out of bounds."""
    row = db_session.execute(text(
        "SELECT (SELECT balance FROM user_balances WHERE user_id = :u),"
        " (SELECT coalesce(sum(remaining + held), 0) FROM credit_lots WHERE user_id = :u),"
        " (SELECT coalesce(sum(credits), 0) FROM lot_postings WHERE user_id = :u),"
        " (SELECT coalesce(sum(credits), 0) FROM user_transactions WHERE user_id = :u AND status = 'completed'),"
        " (SELECT held FROM user_balances WHERE user_id = :u),"
        " (SELECT coalesce(sum(held), 0) FROM credit_lots WHERE user_id = :u),"
        " (SELECT count(*) FROM credit_lots WHERE user_id = :u AND (remaining < 0 OR held < 0 OR remaining + held > credits))"
    ), {"u": user_id}).one()
    balance, in_lots, posted, completed, held, lots_held, broken = row
    assert balance == in_lots == posted == completed, row
    assert held == lots_held and broken == 0, row
    return balance


# --- refunds ---------------------------------------------------------------------------------------------


def test_a_refund_takes_the_purchases_credits_back_from_its_lot(api, db_session):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="9.99").json
    other = api.purchase(user_id, credits=100, amount="2.00").json
    response = refund(api, user_id, purchase["id"], -500, "9.99", description="Refund: Starter pack")
    assert response.status_code == 201, response.json
    assert response.json["refunds"] == purchase["id"] and response.json["reverses"] is None
    assert (response.json["type"], response.json["credits"], response.json["amount"]) == ("refund", -500, "9.99")
    assert api.balance(user_id)["available"] == 100
    lot = lot_of(api, user_id, purchase["id"])
    assert (lot["remaining"], lot["status"]) == (0, "refunded")
    assert lot_of(api, user_id, other["id"])["remaining"] == 100
    assert postings(api, response.json["id"]) == [
        {"lot_id": lot["id"], "credits": -500, "held": 0, "created_at": response.json["created_at"]}
    ]
    assert consistent(db_session, user_id) == 100


def test_partial_refunds_follow_each_other_up_to_what_is_left(api, db_session):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="10.00").json["id"]
    assert refund(api, user_id, purchase, -200, "4.00").status_code == 201
    assert refund(api, user_id, purchase, -100, "0").status_code == 201  # credits only, no money back
    before = ledger_rows(db_session)

    too_many = refund(api, user_id, purchase, -201, "1.00")
    assert too_many.status_code == 409
    assert (too_many.json["code"], too_many.json["remaining"]) == ("refund_exceeds_remaining", 200)
    assert "200 credits left" in too_many.json["detail"]
    too_much = refund(api, user_id, purchase, -10, "6.01")
    assert too_much.status_code == 409
    assert (too_much.json["code"], too_much.json["remaining_amount"]) == ("refund_exceeds_amount", "6.00")
    assert ledger_rows(db_session) == before  # a refused refund writes nothing

    assert refund(api, user_id, purchase, -200, "6.00").status_code == 201
    assert refund(api, user_id, purchase, -1, "0").json["code"] == "refund_exceeds_remaining"
    assert api.balance(user_id)["balance"] == 0
    assert lot_of(api, user_id, purchase)["status"] == "refunded"
    consistent(db_session, user_id)


def test_a_refund_takes_only_unheld_unexpired_credits(api, db_session):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="5.00").json["id"]
    hold = api.usage(user_id, credits=-300, status="pending").json["id"]
    refused = refund(api, user_id, purchase, -300, "1.00")
    assert (refused.status_code, refused.json["remaining"]) == (409, 200)
    assert refund(api, user_id, purchase, -200, "1.00").status_code == 201
    api.settle(hold, "completed")  # the hold still consumes what it reserved
    assert api.balance(user_id)["balance"] == 0

    expiring = api.purchase(user_id, credits=50, amount="1.00", expires_in=3600).json["id"]
    expire_now(db_session, expiring)
    lapsed = refund(api, user_id, expiring, -10, "0.10")
    assert (lapsed.status_code, lapsed.json["code"], lapsed.json["remaining"]) == (409, "refund_exceeds_remaining", 0)
    consistent(db_session, user_id)


def test_a_refund_of_a_purchase_from_before_lots_gives_back_from_the_opening_lot(api, db_session):
    user_id = api.register()
    purchase, lot = uuid.uuid4(), uuid.uuid4()
    db_session.execute(text(
        "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
        " VALUES (:p, :u, 'purchase', 10, 100, 'Before lots', 'completed');"
        " INSERT INTO user_balances (user_id, balance, held) VALUES (:u, 100, 0);"
        " INSERT INTO credit_lots (id, user_id, category, credits, remaining) VALUES (:l, :u, 'paid', 100, 100);"
        " INSERT INTO lot_postings (lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " VALUES (:l, :u, 100, 0, 100, 0, now())"
    ), {"p": purchase, "u": user_id, "l": lot})
    db_session.commit()
    assert refund(api, user_id, purchase, -40, "4.00").status_code == 201
    (opening,) = lots(api, user_id)
    assert (opening["id"], opening["remaining"]) == (str(lot), 60)
    assert consistent(db_session, user_id) == 60


@pytest.mark.parametrize("target", ["missing", "another_users"])
def test_a_refund_of_no_purchase_of_this_user_is_unknown_transaction(api, db_session, target):
    user_id = api.register()
    api.purchase(user_id)
    other = api.purchase(api.register()).json["id"]
    purchase_id = str(uuid.uuid4()) if target == "missing" else other
    before = ledger_rows(db_session)
    response = refund(api, user_id, purchase_id, -10, "0")
    assert (response.status_code, response.json["code"]) == (422, "unknown_transaction")
    assert ledger_rows(db_session) == before


@pytest.mark.parametrize("target", ["usage", "pending_purchase", "failed_purchase", "grant"])
def test_only_a_completed_purchase_is_refundable(api, granter, target):
    user_id = api.funded_user(100)
    made = {
        "usage": lambda: api.usage(user_id, credits=-10),
        "pending_purchase": lambda: api.purchase(user_id, status="pending"),
        "failed_purchase": lambda: api.purchase(user_id, status="failed"),
        "grant": lambda: grant(api, user_id, 10, granter),
    }[target]().json["id"]
    response = refund(api, user_id, made, -10, "0")
    assert (response.status_code, response.json["code"]) == (422, "not_refundable")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"refunds": None}, "refunds"),
        ({"credits": 10}, "credits"),
        ({"status": "pending"}, "status"),
        ({"expires_in": 60}, "expires_in"),
        ({"category": "paid"}, "category"),
        ({"reverses": str(uuid.uuid4())}, "reverses"),
    ],
)
def test_a_malformed_refund_is_422_naming_the_field(api, changes, field):
    user_id = api.funded_user(100)
    body = {"user_id": str(user_id), "type": "refund", "refunds": str(uuid.uuid4()), "credits": -10, "amount": "1",
            "description": "Refund", **changes}
    body = {name: value for name, value in body.items() if value is not None}
    response = api.client.post("/api/transactions", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]


def test_refunds_and_reverses_are_named_only_by_their_own_types(api):
    user_id = api.funded_user(100)
    purchase = api.purchase(user_id, refunds=str(uuid.uuid4()))
    assert (purchase.status_code, list(purchase.json["errors"])) == (422, ["refunds"])
    usage = api.usage(user_id, reverses=str(uuid.uuid4()))
    assert (usage.status_code, list(usage.json["errors"])) == (422, ["reverses"])


def test_a_refund_needs_the_purchase_scope_and_a_reversal_the_usage_scope(api, service_token):
    user_id = api.register()
    purchase = api.purchase(user_id).json["id"]
    usage = api.usage(user_id).json["id"]
    generation = service_token("usage:write", name="generation-service")
    payment = service_token("purchases:write", name="payment-service")
    body = {"user_id": str(user_id), "type": "refund", "refunds": purchase, "credits": -1, "amount": "0",
            "description": "Refund"}
    assert api.create(token=generation, **body).status_code == 403
    assert api.create(token=payment, **body).status_code == 201
    body = {"user_id": str(user_id), "type": "reversal", "reverses": usage, "credits": 1, "description": "Back"}
    assert api.create(token=payment, **body).status_code == 403
    assert api.create(token=generation, **body).status_code == 201


def test_a_retried_refund_is_recorded_once(api, db_session):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=100, amount="5").json["id"]
    first = api.create(key="chargeback-evt-1", user_id=user_id, type="refund", refunds=purchase, credits=-100,
                       amount="5", description="Chargeback")
    again = api.create(key="chargeback-evt-1", user_id=user_id, type="refund", refunds=purchase, credits=-100,
                       amount="5", description="Chargeback")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    assert api.balance(user_id)["balance"] == 0
    consistent(db_session, user_id)


# --- reversals -------------------------------------------------------------------------------------------


def test_a_reversal_gives_credits_back_to_the_lots_the_usage_consumed_the_last_consumed_first(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 30, granter, expires_in=3600).json["id"]  # spent first
    paid = api.purchase(user_id, credits=100, amount="5").json["id"]
    usage = api.usage(user_id, credits=-50).json["id"]  # 30 from the grant, then 20 paid
    first = reverse(api, user_id, usage, 25)
    assert first.status_code == 201, first.json
    assert (first.json["reverses"], first.json["refunds"], first.json["amount"]) == (usage, None, "0.00")
    assert (lot_of(api, user_id, paid)["remaining"], lot_of(api, user_id, promo)["remaining"]) == (100, 5)
    assert sorted(p["credits"] for p in postings(api, first.json["id"])) == [5, 20]
    assert reverse(api, user_id, usage, 25).status_code == 201
    assert lot_of(api, user_id, promo)["remaining"] == 30
    refused = reverse(api, user_id, usage, 1)
    assert (refused.status_code, refused.json["code"], refused.json["remaining"]) == (409, "reversal_exceeds_usage", 0)
    assert consistent(db_session, user_id) == 130


def test_a_reversal_gives_no_lot_more_than_it_gave_even_once_the_lots_sort_otherwise(api, granter, db_session):
    """The spend order of lots can change under a usage's reversals (here a lot's expiry moves, as the
    expiry test of lots does): the next reversal fills what each lot has still to get back, not a share
    worked out from the order."""
    user_id = api.register()
    promo = grant(api, user_id, 8, granter).json["id"]  # never expires, promotional: spent first
    paid = api.purchase(user_id, credits=44, amount="4.40").json["id"]
    usage = api.usage(user_id, credits=-52).json["id"]  # 8 promotional, 44 paid
    assert reverse(api, user_id, usage, 41).status_code == 201  # the paid lot, the last spent, gets 41 of 44
    db_session.execute(
        text("UPDATE credit_lots SET expires_at = now() + interval '1 hour' WHERE transaction_id = :id"), {"id": paid}
    )
    db_session.commit()  # now the never-expiring promotional lot counts as the last spent
    second = reverse(api, user_id, usage, 8)
    assert second.status_code == 201, second.json  # was refused: the plan gave the paid lot 8 more, past its 44
    assert (lot_of(api, user_id, paid)["remaining"], lot_of(api, user_id, promo)["remaining"]) == (41, 8)
    assert consistent(db_session, user_id) == 49


def test_a_reversal_of_a_completed_hold_goes_back_to_the_lots_it_reserved(api, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 10, granter).json["id"]
    paid = api.purchase(user_id, credits=100, amount="5").json["id"]
    hold = api.usage(user_id, credits=-40, status="pending").json["id"]
    api.settle(hold, "completed")
    assert reverse(api, user_id, hold, 35).status_code == 201
    assert (lot_of(api, user_id, paid)["remaining"], lot_of(api, user_id, promo)["remaining"]) == (100, 5)
    assert consistent(db_session, user_id) == 105


def test_credits_given_back_to_a_lot_that_has_expired_since_expire_at_once(api, granter, db_session):
    user_id = api.register()
    api.purchase(user_id, credits=100, amount="5")
    promo = grant(api, user_id, 30, granter, expires_in=3600).json["id"]
    usage = api.usage(user_id, credits=-30).json["id"]  # all from the grant
    expire_now(db_session, promo)
    assert reverse(api, user_id, usage, 30).status_code == 201
    balance = api.balance(user_id)
    assert (balance["balance"], balance["available"], balance["promotional"]) == (100, 100, 0)
    expirations = api.history(user_id, type="expiration").json["data"]
    assert [(e["credits"], e["description"]) for e in expirations] == [(-30, "30 promotional credits expired")]
    assert lot_of(api, user_id, promo)["status"] == "expired"
    assert consistent(db_session, user_id) == 100


def test_a_reversal_of_a_usage_from_before_lots_comes_back_as_a_paid_lot(api, db_session):
    user_id = api.funded_user(100)
    usage = uuid.uuid4()
    db_session.execute(text(
        "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
        " VALUES (:id, :u, 'usage', 0, -40, 'Before lots', 'completed')"
    ), {"id": usage, "u": user_id})
    db_session.execute(text("UPDATE user_balances SET balance = balance - 40 WHERE user_id = :u"), {"u": user_id})
    db_session.execute(text("UPDATE credit_lots SET remaining = remaining - 40 WHERE user_id = :u"), {"u": user_id})
    db_session.execute(text(
        "INSERT INTO lot_postings (lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT id, user_id, -40, 0, 60, 0, now() FROM credit_lots WHERE user_id = :u"
    ), {"u": user_id})
    db_session.commit()
    back = reverse(api, user_id, usage, 40).json
    lot = lot_of(api, user_id, back["id"])
    assert (lot["category"], lot["credits"], lot["remaining"], lot["expires_at"]) == ("paid", 40, 40, None)
    assert consistent(db_session, user_id) == 100


@pytest.mark.parametrize("target", ["pending_usage", "failed_usage", "purchase", "another_users_usage"])
def test_only_a_completed_usage_of_this_user_is_reversible(api, target):
    user_id = api.funded_user(100)
    made = {
        "pending_usage": lambda: api.usage(user_id, credits=-10, status="pending"),
        "failed_usage": lambda: api.usage(user_id, credits=-10, status="failed"),
        "purchase": lambda: api.purchase(user_id),
        "another_users_usage": lambda: api.usage(api.funded_user(100), credits=-10),
    }[target]().json["id"]
    response = reverse(api, user_id, made, 5)
    expected = "unknown_transaction" if target == "another_users_usage" else "not_reversible"
    assert (response.status_code, response.json["code"]) == (422, expected)


@pytest.mark.parametrize(
    "changes, field",
    [({"reverses": None}, "reverses"), ({"credits": -5}, "credits"), ({"amount": "1.00"}, "amount"),
     ({"priority": 10}, "priority"), ({"status": "failed"}, "status")],
)
def test_a_malformed_reversal_is_422_naming_the_field(api, changes, field):
    user_id = api.funded_user(100)
    body = {"user_id": str(user_id), "type": "reversal", "reverses": str(uuid.uuid4()), "credits": 5,
            "description": "Back", **changes}
    body = {name: value for name, value in body.items() if value is not None}
    response = api.client.post("/api/transactions", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]


# --- adjustments -----------------------------------------------------------------------------------------


def test_a_positive_adjustment_is_a_lot_of_its_own(api, adjuster, db_session):
    user_id = api.funded_user(100)
    made = adjust(api, adjuster, user_id, 50, expires_in=3600, priority=10, category="paid")
    assert made.status_code == 201, made.json
    assert (made.json["type"], made.json["amount"], made.json["status"]) == ("adjustment", "0.00", "completed")
    lot = lot_of(api, user_id, made.json["id"])
    assert (lot["category"], lot["credits"], lot["priority"], lot["cost_basis"]) == ("paid", 50, 10, "0")
    assert lot["expires_at"] is not None
    assert adjust(api, adjuster, user_id, 5).status_code == 201
    assert lot_of(api, user_id, adjust(api, adjuster, user_id, 5).json["id"])["category"] == "promotional"
    assert consistent(db_session, user_id) == 160


def test_a_negative_adjustment_spends_in_spend_order_and_never_beyond_what_is_available(api, adjuster, granter, db_session):
    user_id = api.register()
    paid = api.purchase(user_id, credits=100, amount="5").json["id"]
    promo = grant(api, user_id, 20, granter, expires_in=3600).json["id"]
    taken = adjust(api, adjuster, user_id, -30, description="Support: duplicate grant taken back")
    assert taken.status_code == 201, taken.json
    assert (lot_of(api, user_id, promo)["remaining"], lot_of(api, user_id, paid)["remaining"]) == (0, 90)
    before = ledger_rows(db_session)
    refused = adjust(api, adjuster, user_id, -91)
    assert (refused.status_code, refused.json["code"]) == (409, "insufficient_credits")
    assert "90 available" in refused.json["detail"]
    assert ledger_rows(db_session) == before
    assert consistent(db_session, user_id) == 90


@pytest.mark.parametrize(
    "changes, field",
    [({"credits": 0}, "credits"), ({"amount": "1.00"}, "amount"), ({"status": "pending"}, "status"),
     ({"credits": -5, "expires_in": 60}, "expires_in"), ({"credits": -5, "category": "paid"}, "category"),
     ({"description": None}, "description")],
)
def test_a_malformed_adjustment_is_422_naming_the_field(api, adjuster, changes, field):
    user_id = api.funded_user(100)
    body = {"user_id": str(user_id), "type": "adjustment", "credits": 5, "description": "Support", **changes}
    body = {name: value for name, value in body.items() if value is not None}
    response = api.client.post("/api/transactions", json=body, headers=bearer(adjuster))
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]


def test_an_adjustment_needs_the_adjust_scope(api, granter, adjuster):
    user_id = api.funded_user(100)
    assert adjust(api, granter, user_id, 5).status_code == 403
    assert adjust(api, adjuster, user_id, 5).status_code == 201


def test_an_expiration_cannot_be_written_by_a_caller(api):
    user_id = api.funded_user(100)
    response = api.create(user_id=user_id, type="expiration", credits=-10, amount="0", description="Gone")
    assert (response.status_code, list(response.json["errors"])) == (422, ["type"])


def test_every_transaction_shows_refunds_and_reverses(api):
    user_id = api.register()
    purchase = api.purchase(user_id).json
    usage = api.usage(user_id).json
    given_back = refund(api, user_id, purchase["id"], -10, "0").json
    page = api.history(user_id).json["data"]
    assert {(row["type"], row["refunds"], row["reverses"]) for row in page} == {
        ("purchase", None, None), ("usage", None, None), ("refund", purchase["id"], None)
    }
    read = api.client.get(f"/api/transactions/{given_back['id']}", headers=bearer(api.admin_token)).json
    assert read["refunds"] == purchase["id"]
    assert usage["reverses"] is None


# --- concurrency, with real threads against gunicorn ---------------------------------------------------


def _race(live_server, token, bodies):
    barrier = threading.Barrier(len(bodies))
    answers = [None] * len(bodies)

    def send(index):
        barrier.wait()
        response = requests.post(f"{live_server}/api/transactions", json=bodies[index], headers=bearer(token),
                                 timeout=60)
        answers[index] = (response.status_code, response.json().get("code"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.slow
def test_fifty_racing_refunds_of_one_purchase_never_refund_more_than_it_paid(api, live_server, db_session):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="50.00").json["id"]
    api.purchase(user_id, credits=100, amount="1.00")
    body = {"user_id": str(user_id), "type": "refund", "refunds": purchase, "credits": -10, "amount": "3.00",
            "description": "Partial refund"}
    answers = _race(live_server, api.admin_token, [dict(body) for _ in range(50)])
    assert set(answers) <= {(201, None), (409, "refund_exceeds_amount")}, answers
    assert answers.count((201, None)) == 16  # $48 of $50: a 17th would exceed what it paid
    refunded = db_session.execute(text(
        "SELECT sum(amount), sum(credits) FROM user_transactions WHERE refunds = :p"), {"p": purchase}).one()
    assert refunded == (Decimal("48.00"), -160)
    assert lot_of(api, user_id, purchase)["remaining"] == 340
    assert consistent(db_session, user_id) == 440


@pytest.mark.slow
def test_fifty_racing_reversals_of_one_usage_never_give_back_more_than_it_spent(api, live_server, granter, db_session):
    user_id = api.register()
    grant(api, user_id, 40, granter, expires_in=3600)
    api.purchase(user_id, credits=100, amount="5")
    usage = api.usage(user_id, credits=-100).json["id"]  # 40 promotional, 60 paid
    body = {"user_id": str(user_id), "type": "reversal", "reverses": usage, "credits": 3, "description": "Back"}
    answers = _race(live_server, api.admin_token, [dict(body) for _ in range(50)])
    assert set(answers) <= {(201, None), (409, "reversal_exceeds_usage")}, answers
    assert answers.count((201, None)) == 33
    assert db_session.execute(text("SELECT reversed_credits FROM user_transactions WHERE id = :u"),
                              {"u": usage}).scalar() == 99
    by_category = {lot["category"]: lot["remaining"] for lot in lots(api, user_id)}
    assert by_category == {"paid": 100, "promotional": 39}  # the paid credits came back first: spent last
    assert consistent(db_session, user_id) == 139
