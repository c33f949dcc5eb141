"""POST /api/transactions/batch: up to 100 writes in one call, each answered as a single write would be."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from .conftest import make_app
from .helpers import bearer
from .test_concurrency import http, race  # noqa: F401 (the fixture, and threads released at once)


def item(user_id, key=None, **fields):
    body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "Image generation",
            "idempotency_key": key or f"item-{uuid.uuid4()}", **fields}
    return {name: value for name, value in body.items() if value is not None}


def batch(api, items, token=None, **options):
    return api.client.post("/api/transactions/batch", json={"items": items, **options},
                           headers=bearer(token or api.admin_token))


FOOTPRINT = text("SELECT (SELECT count(*) FROM user_transactions), (SELECT count(*) FROM ledger_events),"
                 " (SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM lot_postings),"
                 " (SELECT coalesce(sum(balance), 0) FROM user_balances), (SELECT count(*) FROM usage_rollup)")


def test_each_item_is_answered_as_its_single_write_would_be_in_item_order(api):
    user_id = api.funded_user(25)
    response = batch(api, [
        item(user_id, credits=-10), item(user_id, credits=-10),
        item(user_id, credits=-10),  # the first two took 20 of 25: this one does not fit
        item(user_id, type="purchase", amount="1.00", credits=100),
        item(user_id, credits=-10),  # after the purchase, it does
        item(uuid.uuid4()),  # nobody the ledger knows
    ])
    assert response.status_code == 200
    results = response.json["results"]
    assert [r["status"] for r in results] == [201, 201, 409, 201, 201, 422]
    assert [r["index"] for r in results] == list(range(6))
    assert results[2]["problem"]["code"] == "insufficient_credits" and results[2]["transaction"] is None
    assert results[5]["problem"]["code"] == "unknown_user"
    assert results[4]["transaction"]["credits"] == -10 and results[4]["problem"] is None
    assert api.balance(user_id)["balance"] == 25 - 30 + 100


def _twin(api, granter):
    """Users with the same lots and thresholds: one who gets the batch, and one who gets its items alone."""
    def user(threshold):
        user_id = api.register()
        api.client.put(f"/api/users/{user_id}", json={"low_balance_threshold": threshold},
                       headers=bearer(api.admin_token))
        return user_id

    rich, poor, without_balance = user(95), user(None), api.register()
    for owner in (rich, poor):
        api.purchase(owner, credits=100 if owner == rich else 50, amount="1.00")
    grant = {"type": "grant", "credits": 30, "description": "bonus", "priority": 10, "expires_in": 3600}
    assert api.create(token=granter, user_id=rich, **grant).status_code == 201
    return rich, poor, without_balance, uuid.uuid4()


def _books(api, engine, user_id):
    """What a user's writes left: balance, postings (by lot, in order), events, rollup and lots, without ids
    or times."""
    with engine.connect() as connection:
        postings = connection.execute(text(
            "SELECT l.category, p.credits, p.held, p.balance_after, p.held_after FROM lot_postings AS p"
            " JOIN credit_lots AS l ON l.id = p.lot_id WHERE p.user_id = :u ORDER BY p.id"), {"u": user_id}).all()
        events = connection.execute(text(
            "SELECT type, sequence, coalesce(data->>'credits', data->>'available'), data->>'description',"
            " coalesce(data->>'status', data->>'held') FROM ledger_events WHERE user_id = :u ORDER BY sequence"),
            {"u": user_id}).all()
        lots = connection.execute(text(
            "SELECT category, priority, credits, remaining, held FROM credit_lots WHERE user_id = :u"
            " ORDER BY priority, category, credits"), {"u": user_id}).all()
        rollup = connection.execute(text(
            "SELECT key, grain, value, sum(credits) FROM usage_rollup WHERE user_id = :u GROUP BY 1, 2, 3"
            " ORDER BY 1, 2, 3"), {"u": user_id}).all()
    return api.balance(user_id), postings, events, rollup, lots


def test_a_batch_answers_and_books_what_its_items_alone_would(api, engine, service_token):
    """The batch's usage goes in one statement; its users' books are the same as if each item had been
    written alone, in item order: spends and holds from the lots in spend order, balance.low where it
    falls, refusals, replays."""
    granter = service_token("credits:grant", name="batch-granter")
    batched, alone = _twin(api, granter), _twin(api, granter)

    def items(rich, poor, without_balance, stranger, side):
        def spend(owner, credits, n, **fields):
            return item(owner, key=f"{side}-{n}", credits=-credits, description=f"item {n}", **fields)
        return [
            spend(rich, 20, 0, metadata={"model": "small"}), spend(poor, 30, 1, status="pending"),  # a hold
            spend(rich, 20, 2, metadata={"model": "large"}), spend(rich, 5, 11),  # below 95, and after it
            spend(rich, 7, 12, status="pending", hold_expires_in=600),  # a hold among spends
            spend(rich, 200, 3), spend(rich, 5, 4),  # refused, then one that fits after it
            spend(poor, 30, 5), spend(stranger, 1, 6), spend(without_balance, 1, 7), spend(poor, 20, 8),
            spend(poor, 1, 13, status="pending", hold_expires_in=10**6),  # longer than HOLD_TTL_SECONDS
            spend(rich, 20, 0, metadata={"model": "small"}),  # item 0 again: its answer
            spend(rich, 21, 2),  # item 2's key, another request
            item(rich, key=f"{side}-9", type="purchase", amount="1.00", credits=10), spend(rich, 60, 10),
        ]

    answers = batch(api, items(*batched, "batch")).json["results"]
    singles = []
    for body in items(*alone, "alone"):
        key = body.pop("idempotency_key")
        singles.append(api.create(key=key, **body))
    # A single write replayed from its key answers 201 as first, with Idempotent-Replayed; an item, 200.
    replayed = [s.headers.get("Idempotent-Replayed") == "true" for s in singles]
    assert [a["status"] for a in answers] == [200 if r else s.status_code for s, r in zip(singles, replayed)] == [
        201, 201, 201, 201, 201, 409, 201, 409, 422, 409, 201, 422, 200, 422, 201, 201]
    assert [a["problem"] and a["problem"]["code"] for a in answers] == [
        s.status_code >= 400 and s.json["code"] or None for s in singles]
    for mine, theirs in zip(batched, alone):
        if mine != batched[3]:
            book, twin = _books(api, engine, mine), _books(api, engine, theirs)
            assert book[1:] == twin[1:]
            assert {k: v for k, v in book[0].items() if k != "user_id"} == {
                k: v for k, v in twin[0].items() if k != "user_id"}


def test_an_items_key_replays_across_batches_and_single_writes(api):
    user_id = api.funded_user(100)
    single = api.usage(user_id, credits=-7, key="gen-1")
    assert single.status_code == 201
    first = batch(api, [item(user_id, key="gen-1", credits=-7), item(user_id, key="gen-2", credits=-3)]).json
    assert [(r["status"], r["replayed"]) for r in first["results"]] == [(200, True), (201, False)]
    assert first["results"][0]["transaction"] == single.json
    # The whole batch again, as after a timeout: each item once.
    again = batch(api, [item(user_id, key="gen-1", credits=-7), item(user_id, key="gen-2", credits=-3)]).json
    assert [(r["status"], r["replayed"]) for r in again["results"]] == [(200, True), (200, True)]
    assert again["results"][1]["transaction"] == first["results"][1]["transaction"]
    assert api.balance(user_id)["balance"] == 90
    other = batch(api, [item(user_id, key="gen-2", credits=-4)]).json["results"][0]
    assert (other["status"], other["problem"]["code"]) == (422, "idempotency_key_reused")
    alone = api.usage(user_id, credits=-3, key="gen-2")
    assert alone.status_code == 201 and alone.headers["Idempotent-Replayed"] == "true"


def test_each_item_needs_the_scope_of_its_type(api, service_token):
    user_id = api.funded_user(100)
    generation = service_token("usage:write")
    results = batch(api, [item(user_id), item(user_id, type="purchase", amount="1.00", credits=5)], generation).json
    assert [r["status"] for r in results["results"]] == [201, 403]
    assert results["results"][1]["problem"]["code"] == "insufficient_scope"
    assert batch(api, [item(user_id)], service_token("transactions:read")).status_code == 403


def test_a_user_cannot_write_a_batch(api, user_token):
    user_id = api.register()
    assert batch(api, [item(user_id)], user_token(user_id)).status_code == 403


@pytest.mark.parametrize("body, field", [
    ({"items": []}, "items"),
    ({"items": [{}] * 101}, "items"),
    ({"items": {"user_id": "x"}}, "items"),
    ({}, "items"),
    ({"items": [{}], "atomic": "yes"}, "atomic"),
    ({"items": [{}], "atomic": 0}, "atomic"),
])
def test_a_batch_that_is_not_one_is_refused_whole(api, body, field, engine):
    with engine.connect() as connection:
        before = connection.scalar(text("SELECT count(*) FROM user_transactions"))
    response = api.client.post("/api/transactions/batch", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422 and field in response.json["errors"]
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM user_transactions")) == before


def test_a_batch_with_an_item_that_is_not_a_write_writes_nothing(api, engine):
    user_id = api.funded_user(100)
    with engine.connect() as connection:
        before = connection.scalar(text("SELECT count(*) FROM user_transactions"))
    response = batch(api, [item(user_id), item(user_id, credits=10), "not an object",
                           item(user_id) | {"idempotency_key": None}, item(user_id, key=" spaced"), item(user_id)])
    assert response.status_code == 422
    assert response.json["errors"]["items"] == {
        "1": {"credits": ["Usage spends credits: must be less than 0."]},
        "2": {"_schema": ["An item must be a JSON object."]},
        "3": {"idempotency_key": ["Field may not be null."]},
        "4": {"idempotency_key": [
            "Must be 1 to 255 printable ASCII characters other than a comma, not starting or ending with a space."]},
    }
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM user_transactions")) == before


def test_rate_limits_count_the_items_of_a_batch(database_url, service_token):
    client = make_app(database_url, RATELIMIT_DEFAULT="1000000 per minute", RATELIMIT_PER_ADDRESS="1000000 per minute",
                      RATELIMIT_SERVICE_DEFAULT="10 per minute").test_client()
    key = service_token("usage:write", "users:write")
    user_id = uuid.uuid4()
    assert client.put(f"/api/users/{user_id}", headers=bearer(key)).status_code == 201  # 1
    eight = client.post("/api/transactions/batch", json={"items": [item(user_id) for _ in range(8)]},
                        headers=bearer(key))
    assert eight.status_code == 200 and eight.headers["X-RateLimit-Remaining"] == "1"  # 1 + 8
    three = client.post("/api/transactions/batch", json={"items": [item(user_id) for _ in range(3)]},
                        headers=bearer(key))
    assert three.status_code == 429


@pytest.mark.slow
def test_racing_batches_of_one_user_never_overdraw(http):  # noqa: F811
    """Twelve batches of ten 1-credit spends race, across four workers, for a balance of 50."""
    user_id = uuid.uuid4()
    assert http("PUT", f"/api/users/{user_id}").status_code == 201
    assert http("POST", "/api/transactions", json={"user_id": str(user_id), "type": "purchase", "amount": "1",
                                                   "credits": 50, "description": "funding"}).status_code == 201
    answers = race(12, lambda _: http("POST", "/api/transactions/batch",
                                      json={"items": [item(user_id, credits=-1) for _ in range(10)]}).json())
    statuses = [result["status"] for answer in answers for result in answer["results"]]
    assert statuses.count(201) == 50 and set(statuses) <= {201, 409}
    assert http("GET", f"/api/balance?user_id={user_id}").json()["available"] == 0


# --- atomic: all or none ---------------------------------------------------------------------------


def test_an_atomic_batch_applies_every_item(api):
    first, second = api.funded_user(30), api.funded_user(30)
    response = batch(api, [item(first, credits=-20), item(second, credits=-30), item(first, credits=-10)], atomic=True)
    assert response.status_code == 201
    assert [r["status"] for r in response.json["results"]] == [201, 201, 201]
    assert (api.balance(first)["balance"], api.balance(second)["balance"]) == (0, 0)


def test_an_atomic_batch_with_one_refused_item_writes_nothing(api, engine):
    first, second = api.funded_user(30), api.funded_user(30)
    items = [item(first, credits=-20, metadata={"model": "m"}), item(second, credits=-30),
             item(first, credits=-20)]  # 10 left
    with engine.connect() as connection:
        before = connection.execute(FOOTPRINT).one()
    refused = batch(api, items, atomic=True)
    assert refused.status_code == 409
    assert (refused.json["code"], refused.json["index"]) == ("insufficient_credits", 2)
    assert refused.json["detail"].startswith("Item 2: ") and "Nothing in the batch was written" in refused.json["detail"]
    with engine.connect() as connection:
        assert connection.execute(FOOTPRINT).one() == before  # no row, event, key, posting or rollup
    # Nothing was recorded under the keys either: once there is enough, the same batch applies.
    api.purchase(first, credits=10)
    again = batch(api, items, atomic=True)
    assert again.status_code == 201 and [r["replayed"] for r in again.json["results"]] == [False] * 3


def test_an_item_replayed_from_its_key_counts_as_applied(api):
    user_id = api.funded_user(30)
    assert api.usage(user_id, credits=-10, key="once", description="Image generation").status_code == 201
    response = batch(api, [item(user_id, key="once"), item(user_id, credits=-20)], atomic=True)
    assert response.status_code == 201
    assert [(r["status"], r["replayed"]) for r in response.json["results"]] == [(200, True), (201, False)]
    assert api.balance(user_id)["balance"] == 0


@pytest.mark.slow
def test_atomic_batches_over_the_same_users_in_opposite_orders_do_not_deadlock(http):  # noqa: F811
    users = []
    for _ in range(2):
        user_id = uuid.uuid4()
        assert http("PUT", f"/api/users/{user_id}").status_code == 201
        assert http("POST", "/api/transactions", json={"user_id": str(user_id), "type": "purchase", "amount": "1",
                                                       "credits": 30, "description": "funding"}).status_code == 201
        users.append(user_id)

    def send(i):
        first, second = users if i % 2 else users[::-1]
        return http("POST", "/api/transactions/batch", json={"atomic": True, "items": [
            item(first, credits=-1), item(second, credits=-1)]})

    statuses = [response.status_code for response in race(16, send)]
    assert statuses == [201] * 16
    for user_id in users:
        assert http("GET", f"/api/balance?user_id={user_id}").json()["balance"] == 30 - 16


def test_an_atomic_batch_whose_commit_loses_its_connection_is_503_and_safe_to_send_again(api, engine, monkeypatch):
    """The database going away at the COMMIT leaves the outcome unknown: a 503 to retry, never a 500."""
    from transactions_service.extensions import run_statement
    from transactions_service.ledger import rules

    user_id = api.funded_user(30)
    items = [item(user_id, credits=-10), item(user_id, credits=-5)]
    debit = rules.record_debits

    def and_lose_the_connection(*args, **kwargs):
        recorded = debit(*args, **kwargs)
        ((pid,),) = run_statement("SELECT pg_backend_pid()", {})  # the batch's own connection
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        return recorded

    monkeypatch.setattr(rules, "record_debits", and_lose_the_connection)
    lost = batch(api, items, atomic=True)
    assert (lost.status_code, lost.json["code"]) == (503, "database_unavailable")
    monkeypatch.undo()
    again = batch(api, items, atomic=True)
    assert again.status_code == 201
    assert api.balance(user_id)["balance"] == 15  # once, whatever the lost COMMIT did


def test_an_atomic_batch_whose_statement_loses_its_connection_goes_again_one_by_one(api, engine):
    """The connection gone in the middle of the batch's one statement (here while it waits for a balance
    row another transaction holds): nothing was written, and the items go one by one, once each."""
    import threading
    import time

    user_id = api.funded_user(30)
    holder = engine.connect()
    holder.execute(text("SELECT 1 FROM user_balances WHERE user_id = :u FOR UPDATE"), {"u": user_id})

    def kill_the_waiting_statement():
        with engine.connect() as other:
            for _ in range(200):
                pid = other.execute(text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'WITH items AS MATERIALIZED%'")).scalar()
                if pid is not None:
                    other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    break
                time.sleep(0.01)
        holder.rollback()
        holder.close()

    killer = threading.Thread(target=kill_the_waiting_statement)
    killer.start()
    response = batch(api, [item(user_id, credits=-10), item(user_id, credits=-5)], atomic=True)
    killer.join()
    assert response.status_code == 201, response.json
    assert api.balance(user_id)["balance"] == 15


def test_an_atomic_batch_that_cannot_reach_the_database_is_503(api, app, monkeypatch):
    """No connection to be had (the database shutting down): a 503 to retry, as for any write."""
    import psycopg2

    from transactions_service.config import STATEMENTS_BIND
    from transactions_service.extensions import db

    user_id = api.funded_user(30)
    with app.app_context():
        engine = db.engines[STATEMENTS_BIND]

    def refused():
        raise psycopg2.OperationalError("FATAL:  the database system is shutting down")

    monkeypatch.setattr(engine, "raw_connection", refused)
    response = batch(api, [item(user_id, credits=-10)], atomic=True)
    assert (response.status_code, response.json["code"]) == (503, "database_unavailable")
