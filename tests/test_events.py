"""The event feed: every write's events in its own statement, in an order a reader never loses its place in."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import psycopg2
import pytest
import requests
from sqlalchemy import text

from transactions_service.ids import utcnow
from transactions_service.ledger import idempotency, rules, store
from transactions_service.ledger.models import TransactionStatus, TransactionType

from .helpers import bearer, lapse, without_postings
from .test_lots import expire_now, grant, lots


@pytest.fixture
def reader(service_token):
    return service_token("events:read", name="finance-mirror")


@pytest.fixture
def granter(service_token):
    return service_token("credits:grant", "credits:adjust", "usage:write", "transactions:read", name="growth-service")


def feed(api, token, **params):
    response = api.client.get("/api/events", query_string=params, headers=bearer(token))
    assert response.status_code == 200, response.json
    return response.json


def all_events(api, token, after=None, **params):
    """Every event from ``after`` (or the oldest) to the end of the feed, a page at a time."""
    events = []
    while True:
        page = feed(api, token, **params, **({"after": after} if after else {}))
        events.extend(page["data"])
        after = page["next_cursor"]
        if not page["has_more"]:
            return events, after


def of_user(api, token, user_id):
    return all_events(api, token, user_id=str(user_id))[0]


def shown(api, transaction_id):
    response = api.client.get(f"/api/transactions/{transaction_id}", headers=bearer(api.admin_token))
    return without_postings(response.json)


# --- each write's events ----------------------------------------------------------------------------


def test_a_purchase_has_one_created_event_with_the_transaction_as_the_api_showed_it(api, reader):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=500, amount="9.99", description="Starter pack, «500» crédits").json
    (event,) = of_user(api, reader, user_id)
    assert event["type"] == "transaction.created"
    assert (event["user_id"], event["sequence"], event["created_at"]) == (str(user_id), 1, purchase["created_at"])
    assert event["data"] == purchase == shown(api, purchase["id"])
    uuid.UUID(event["id"])


def test_a_settlement_is_an_updated_event_and_the_created_event_keeps_the_state_it_had(api, reader):
    user_id = api.funded_user(1000)
    hold = api.usage(user_id, credits=-30, status="pending").json
    checkout = api.purchase(user_id, credits=100, status="pending").json
    settled = api.settle(hold["id"], "completed").json
    failed = api.settle(checkout["id"], "failed").json
    events = of_user(api, reader, user_id)
    assert [(e["type"], e["data"]["id"], e["data"]["status"]) for e in events] == [
        ("transaction.created", events[0]["data"]["id"], "completed"),
        ("transaction.created", hold["id"], "pending"),
        ("transaction.created", checkout["id"], "pending"),
        ("transaction.updated", hold["id"], "completed"),
        ("transaction.updated", checkout["id"], "failed"),
    ]
    assert events[1]["data"] == hold and events[3]["data"] == settled == shown(api, hold["id"])
    assert events[4]["data"] == failed
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5]


def test_grants_refunds_reversals_and_adjustments_each_have_their_created_event(api, reader, granter):
    user_id = api.register()
    purchase = api.purchase(user_id, credits=100, amount="5.00").json
    written = [
        purchase,
        grant(api, user_id, 50, granter).json,
        api.create(user_id=user_id, type="refund", refunds=purchase["id"], amount="1.00", credits=-20,
                   description="Partial refund").json,
    ]
    usage = api.usage(user_id, credits=-30).json
    written += [
        usage,
        api.create(token=granter, user_id=user_id, type="reversal", reverses=usage["id"], credits=10,
                   description="Failed generation").json,
        api.create(token=granter, user_id=user_id, type="adjustment", credits=-5, description="Goodwill correction").json,
    ]
    events = of_user(api, reader, user_id)
    assert [e["type"] for e in events] == ["transaction.created"] * 6
    assert [e["data"] for e in events] == written
    assert [e["sequence"] for e in events] == list(range(1, 7))


def test_a_lapsed_hold_released_by_the_job_is_an_updated_event(api, reader, app, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-40, status="pending").json
    lapse(db_session, hold["id"])
    assert app.test_cli_runner().invoke(args=["transactions", "expire"]).exit_code == 0
    *_, event = of_user(api, reader, user_id)
    assert event["type"] == "transaction.updated"
    assert event["data"] == shown(api, hold["id"])
    assert (event["data"]["status"], event["sequence"]) == ("failed", 3)


def test_an_expired_lot_has_its_expiration_and_the_lot_as_it_was_left(api, reader, granter, db_session):
    user_id = api.register()
    promo = grant(api, user_id, 80, granter, expires_in=600).json
    api.purchase(user_id, credits=100, amount="5")
    api.usage(user_id, credits=-30)  # 30 of the promotional lot's 80
    expire_now(db_session, promo["id"])
    api.usage(user_id, credits=-10)  # the next write spends from what is left, then records the expiry
    events = of_user(api, reader, user_id)
    assert [e["type"] for e in events] == ["transaction.created"] * 5 + ["lot.expired"]
    expiration, lot_event = events[4], events[5]
    assert expiration["data"] == shown(api, expiration["data"]["id"])
    assert (expiration["data"]["type"], expiration["data"]["credits"]) == ("expiration", -50)
    (lot,) = [lot for lot in lots(api, user_id) if lot["transaction_id"] == promo["id"]]
    assert lot_event["data"] == {**lot, "expired": 50}
    assert [e["sequence"] for e in events] == list(range(1, 7))


# --- what writes nothing emits nothing ---------------------------------------------------------------


def test_refused_replayed_and_failed_writes_emit_nothing(api, reader):
    user_id = api.funded_user(100)
    assert api.usage(user_id, credits=-500).status_code == 409
    first = api.create(user_id=user_id, type="usage", amount="0", credits=-10, description="once", key="k-1")
    again = api.create(user_id=user_id, type="usage", amount="0", credits=-10, description="once", key="k-1")
    assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (201, 201, "true")
    stranger = uuid.uuid4()
    assert api.purchase(stranger, status="pending").status_code == 422  # an unknown user: the statement fails
    assert [e["sequence"] for e in of_user(api, reader, user_id)] == [1, 2]
    assert of_user(api, reader, stranger) == []


def test_a_write_that_rolls_back_leaves_no_event(api, reader, engine):
    user_id = api.funded_user(100)
    with engine.connect() as connection:
        with connection.begin() as transaction:
            connection.execute(text("UPDATE user_balances SET event_sequence = event_sequence + 1 WHERE user_id = :u"),
                               {"u": user_id})
            connection.execute(
                text("INSERT INTO ledger_events (type, user_id, sequence, data, created_at)"
                     " VALUES ('transaction.created', :u, 2, '{}', now())"), {"u": user_id}
            )
            transaction.rollback()
    assert api.usage(user_id, credits=-10).status_code == 201
    assert [e["sequence"] for e in of_user(api, reader, user_id)] == [1, 2]


# --- reading the feed --------------------------------------------------------------------------------


def test_pages_follow_each_other_and_the_cursor_stays_put_when_nothing_is_new(api, reader):
    user_id = api.funded_user(1000)
    for _ in range(4):
        api.usage(user_id, credits=-1)
    first = feed(api, reader, limit=2)
    assert (len(first["data"]), first["has_more"]) == (2, True)
    rest, cursor = all_events(api, reader, after=first["next_cursor"])
    assert [e["sequence"] for e in first["data"] + rest] == [1, 2, 3, 4, 5]
    idle = feed(api, reader, after=cursor)
    assert (idle["data"], idle["has_more"], idle["next_cursor"]) == ([], False, cursor)
    api.usage(user_id, credits=-1)
    assert [e["sequence"] for e in feed(api, reader, after=cursor)["data"]] == [6]


def test_the_feed_filters_by_type_and_by_user(api, reader, db_session):
    one, other = api.funded_user(100), api.funded_user(100)
    hold = api.usage(one, credits=-10, status="pending").json
    api.settle(hold["id"], "completed")
    updated = feed(api, reader, type="transaction.updated")["data"]
    assert [(e["type"], e["data"]["id"]) for e in updated] == [("transaction.updated", hold["id"])]
    both = api.client.get("/api/events?type=transaction.updated&type=transaction.created", headers=bearer(reader))
    assert len(both.json["data"]) == 4
    assert {e["user_id"] for e in feed(api, reader, user_id=str(other))["data"]} == {str(other)}


@pytest.mark.parametrize("query, status, code", [
    ("after=12-x", 400, "invalid_cursor"),
    ("after=99999999999999999999-1", 400, "invalid_cursor"),
    ("limit=0", 422, "validation_error"),
    ("limit=101", 422, "validation_error"),
    ("type=transaction.deleted", 422, "validation_error"),
    ("user_id=nope", 422, "validation_error"),
    ("since=1", 422, "validation_error"),
])
def test_a_bad_query_is_a_problem(api, reader, query, status, code):
    response = api.client.get(f"/api/events?{query}", headers=bearer(reader))
    assert (response.status_code, response.json["code"]) == (status, code)


def test_only_services_with_events_read_may_read_the_feed(api, service_token, user_token):
    user_id = api.register()
    as_user = api.client.get("/api/events", headers=bearer(user_token(user_id)))
    assert (as_user.status_code, as_user.json["code"]) == (403, "forbidden")
    without_scope = api.client.get("/api/events", headers=bearer(service_token("transactions:read")))
    assert (without_scope.status_code, without_scope.json["code"]) == (403, "insufficient_scope")
    assert api.client.get("/api/events").status_code == 401


# --- never a gap --------------------------------------------------------------------------------------


def test_an_event_of_a_write_still_open_holds_back_later_ones_until_it_ends(api, app, reader, direct_database_url):
    """A write that began first and commits last: a reader must not move past its place in the meantime."""
    early, late = api.funded_user(100), api.funded_user(100)
    _, cursor = all_events(api, reader)
    request = {"type": TransactionType.PURCHASE, "status": TransactionStatus.COMPLETED, "user_id": early,
               "amount": Decimal("1.00"), "credits": 10, "description": "A purchase that commits late"}
    with app.app_context():
        new, row = rules._new_transaction(request, utcnow())
    slow = psycopg2.connect(direct_database_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with slow.cursor() as statement:  # the service's own write, its transaction left open
            statement.execute(store._record("credit", False, False, False), {**row, "event": idempotency.snapshot(new)})
        assert api.usage(late, credits=-5).status_code == 201  # begins later, commits first
        held_back = feed(api, reader, after=cursor)
        assert (held_back["data"], held_back["next_cursor"]) == ([], cursor)
        slow.commit()
    finally:
        slow.close()
    events, _ = all_events(api, reader, after=cursor)
    assert [(e["user_id"], e["data"]["description"]) for e in events] == [
        (str(early), "A purchase that commits late"), (str(late), "Image generation")
    ]


def test_a_reader_paging_while_fifty_writers_commit_sees_every_event_once_in_order(api, reader, live_server, engine):
    users = [api.funded_user(1000) for _ in range(5)]
    _, start = all_events(api, reader)
    done = threading.Event()
    seen: list[dict] = []

    def write(index):
        body = {"user_id": str(users[index % 5]), "type": "usage", "amount": "0", "credits": -1, "description": f"w{index}"}
        response = requests.post(f"{live_server}/api/transactions", json=body, timeout=30,
                                 headers={**bearer(api.admin_token), "Idempotency-Key": f"feed-{index}"})
        assert response.status_code == 201, response.text

    def read():
        cursor = start
        while True:
            finished = done.is_set()
            page = requests.get(f"{live_server}/api/events", params={"after": cursor, "limit": 7},
                                headers=bearer(reader), timeout=30).json()
            seen.extend(page["data"])
            cursor = page["next_cursor"]
            if finished and not page["has_more"]:
                return

    reading = threading.Thread(target=read)
    reading.start()
    writers = [threading.Thread(target=write, args=(index,)) for index in range(50)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reading.join()
    with engine.connect() as connection:
        written = connection.execute(text(
            "SELECT id::text FROM ledger_events WHERE user_id = ANY(:users) AND sequence > 1 ORDER BY xid, position"
        ), {"users": users}).scalars().all()
    assert len(written) == 50
    assert [event["id"] for event in seen] == written  # all of them, once each, in the feed's order
    for user_id in users:  # each user's numbered 2, 3, ... 11: one number per write, none twice
        assert sorted(e["sequence"] for e in seen if e["user_id"] == str(user_id)) == list(range(2, 12))


# --- retention --------------------------------------------------------------------------------------


def test_prune_deletes_events_older_than_the_retention_and_keeps_the_rest(api, reader, app, engine):
    user_id = api.funded_user(100)
    api.usage(user_id, credits=-1)
    with engine.begin() as connection:
        connection.execute(text("UPDATE ledger_events SET created_at = :old WHERE sequence = 1 AND user_id = :u"),
                           {"old": utcnow() - timedelta(days=31), "u": user_id})
    result = app.test_cli_runner().invoke(args=["events", "prune"])
    assert (result.exit_code, result.output.strip()) == (0, "deleted 1 events and 0 webhook deliveries")
    assert [e["sequence"] for e in of_user(api, reader, user_id)] == [2]
    result = app.test_cli_runner().invoke(args=["events", "prune", "--older-than", "0s"])
    assert result.output.strip() == "deleted 1 events and 0 webhook deliveries"


def test_event_data_is_stored_as_written(api, engine):
    """json, not jsonb: the members keep the order the API shows them in."""
    user_id = api.register()
    purchase = api.purchase(user_id).get_data(as_text=True)
    with engine.connect() as connection:
        data = connection.execute(text("SELECT data::text FROM ledger_events WHERE user_id = :u"), {"u": user_id}).scalar()
    assert list(json.loads(data)) == list(json.loads(purchase))


# --- low balance -------------------------------------------------------------------------------------


def set_threshold(api, user_id, threshold):
    response = api.client.put(f"/api/users/{user_id}", json={"low_balance_threshold": threshold},
                              headers=bearer(api.admin_token))
    assert response.status_code == 200, response.json
    return response.json


def lows(api, reader, user_id):
    return [e for e in of_user(api, reader, user_id) if e["type"] == "balance.low"]


def test_balance_low_fires_once_on_the_way_down_and_again_only_after_coming_back(api, reader):
    user_id = api.funded_user(150)
    assert set_threshold(api, user_id, 100)["low_balance_threshold"] == 100
    api.usage(user_id, credits=-40)  # 110: still at or above
    assert lows(api, reader, user_id) == []
    crossing = api.usage(user_id, credits=-20).json  # 90: below
    api.usage(user_id, credits=-10)  # 80: still below, no second alert
    (low,) = lows(api, reader, user_id)
    assert low["data"] == {"user_id": str(user_id), "balance": 90, "held": 0, "available": 90, "threshold": 100}
    events = of_user(api, reader, user_id)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[events.index(low) - 1]["data"]["id"] == crossing["id"]  # right after the write that crossed
    api.purchase(user_id, credits=100)  # 180: back above, armed again
    api.usage(user_id, credits=-90, status="pending")  # a hold counts: available 90
    assert [(e["data"]["balance"], e["data"]["held"], e["data"]["available"]) for e in lows(api, reader, user_id)] == [
        (90, 0, 90), (180, 90, 90)
    ]


def test_landing_on_the_threshold_is_not_below_it_and_leaving_it_is(api, reader):
    user_id = api.funded_user(100)
    set_threshold(api, user_id, 60)
    api.usage(user_id, credits=-40)  # exactly 60
    assert lows(api, reader, user_id) == []
    api.usage(user_id, credits=-1)  # 59
    assert [e["data"]["available"] for e in lows(api, reader, user_id)] == [59]


def test_a_refund_and_an_expiry_that_cross_the_threshold_fire_it(api, reader, granter, db_session, app):
    user_id = api.register()
    set_threshold(api, user_id, 50)
    purchase = api.purchase(user_id, credits=100, amount="10.00").json
    api.create(user_id=user_id, type="refund", refunds=purchase["id"], amount="6.00", credits=-60,
               description="Partial refund")
    assert [e["data"]["available"] for e in lows(api, reader, user_id)] == [40]
    other = api.register()
    set_threshold(api, other, 50)
    promo = grant(api, other, 80, granter, expires_in=600).json
    api.purchase(other, credits=20, amount="2.00")
    expire_now(db_session, promo["id"])
    assert app.test_cli_runner().invoke(args=["transactions", "expire"]).exit_code == 0
    (low,) = lows(api, reader, other)
    assert (low["data"]["available"], low["data"]["threshold"]) == (20, 50)
    assert [e["type"] for e in of_user(api, reader, other)][-3:] == ["transaction.created", "lot.expired", "balance.low"]


def test_the_default_threshold_applies_unless_a_user_has_their_own_or_none(api, reader, app, monkeypatch):
    monkeypatch.setitem(app.config, "LOW_BALANCE_THRESHOLD", 50)
    by_default, own, off = api.funded_user(100), api.funded_user(100), api.funded_user(100)
    assert set_threshold(api, own, 90)["low_balance_threshold"] == 90
    assert set_threshold(api, off, None)["low_balance_threshold"] is None
    registered = api.client.put(f"/api/users/{by_default}", headers=bearer(api.admin_token)).json
    assert registered["low_balance_threshold"] == 50
    for user_id in (by_default, own, off):
        api.usage(user_id, credits=-60)
    assert [e["data"]["threshold"] for e in lows(api, reader, by_default)] == [50]
    assert [e["data"]["threshold"] for e in lows(api, reader, own)] == [90]
    assert lows(api, reader, off) == []
    assert api.client.put(f"/api/users/{own}", headers=bearer(api.admin_token)).json["low_balance_threshold"] == 90


@pytest.mark.parametrize("threshold", [-1, "100", True, 1.5, 1_000_000_001])
def test_a_threshold_that_is_not_a_count_of_credits_is_refused(api, threshold):
    user_id = api.register()
    response = api.client.put(f"/api/users/{user_id}", json={"low_balance_threshold": threshold},
                              headers=bearer(api.admin_token))
    assert (response.status_code, response.json["code"]) == (422, "validation_error")
    assert "low_balance_threshold" in response.json["errors"]


def test_balance_low_fires_once_across_fifty_concurrent_spends_that_cross_it(api, reader, live_server):
    user_id = api.funded_user(1000)
    set_threshold(api, user_id, 500)
    barrier = threading.Barrier(50)
    statuses = []

    def spend(index):
        barrier.wait()
        body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -20, "description": f"s{index}"}
        statuses.append(requests.post(f"{live_server}/api/transactions", json=body, timeout=30,
                                      headers=bearer(api.admin_token)).status_code)

    threads = [threading.Thread(target=spend, args=(index,)) for index in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 50
    (low,) = lows(api, reader, user_id)
    assert low["data"]["available"] == 480
    assert sorted(e["sequence"] for e in of_user(api, reader, user_id)) == list(range(1, 53))
