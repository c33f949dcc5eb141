"""Races, run for real: many threads against the service under gunicorn (4 workers)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select, text

from transactions_service.scopes import SERVICE_SCOPES
from transactions_service.ledger.models import TransactionStatus, UserBalance, UserTransaction

from .helpers import lapse

pytestmark = pytest.mark.slow


@pytest.fixture
def http(live_server, service_token):
    session_headers = {"Authorization": f"Bearer {service_token(*sorted(SERVICE_SCOPES), name='race-service')}"}

    def call(method, path, **kwargs):
        return requests.request(method, live_server + path, headers={**session_headers, **kwargs.pop("headers", {})}, timeout=30, **kwargs)

    return call


def race(count, action):
    """Run ``action(i)`` from ``count`` threads released at the same moment."""
    barrier = threading.Barrier(count)

    def run(index):
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def ledger_totals(db_session, user_id):
    completed = db_session.scalar(
        select(func.coalesce(func.sum(UserTransaction.credits), 0)).where(
            UserTransaction.user_id == user_id, UserTransaction.status == TransactionStatus.COMPLETED
        )
    )
    db_session.expire_all()
    balance = db_session.get(UserBalance, user_id)
    return completed, balance.balance, balance.held


def funded_user(http, credits):
    user_id = uuid.uuid4()
    assert http("PUT", f"/api/users/{user_id}").status_code == 201
    purchase = {"user_id": str(user_id), "type": "purchase", "amount": "10", "credits": credits, "description": "funding"}
    assert http("POST", "/api/transactions", json=purchase).status_code == 201
    return user_id


def test_fifty_concurrent_spends_against_a_balance_for_ten(http, db_session):
    user_id = funded_user(http, 100)
    spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "generation"}
    responses = race(50, lambda index: http("POST", "/api/transactions", json=spend, headers={"Idempotency-Key": f"spend-{index}"}))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 10, 409: 40}
    assert {response.json()["code"] for response in responses if response.status_code == 409} == {"insufficient_credits"}
    completed, balance, held = ledger_totals(db_session, user_id)
    assert completed == balance == 0
    assert held == 0


def test_fifty_concurrent_holds_never_overdraw(http, db_session):
    user_id = funded_user(http, 100)
    hold = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -7, "description": "generation", "status": "pending"}
    responses = race(50, lambda index: http("POST", "/api/transactions", json=hold))
    assert Counter(response.status_code for response in responses) == {201: 14, 409: 36}
    completed, balance, held = ledger_totals(db_session, user_id)
    assert (completed, balance, held) == (100, 100, 98)


def test_racing_settles_of_one_transaction_apply_once(http, db_session):
    user_id = funded_user(http, 0 + 1)
    pending = {"user_id": str(user_id), "type": "purchase", "amount": "9.99", "credits": 500, "description": "pack", "status": "pending"}
    transaction_id = http("POST", "/api/transactions", json=pending).json()["id"]
    responses = race(20, lambda index: http("PATCH", f"/api/transactions/{transaction_id}", json={"status": "completed"}))
    assert Counter(response.status_code for response in responses) == {200: 20}
    completed, balance, held = ledger_totals(db_session, user_id)
    assert completed == balance == 501


def test_racing_complete_and_fail_of_a_hold_pick_one_winner(http, db_session):
    user_id = funded_user(http, 100)
    hold = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -40, "description": "gen", "status": "pending"}
    transaction_id = http("POST", "/api/transactions", json=hold).json()["id"]
    responses = race(
        20,
        lambda index: http("PATCH", f"/api/transactions/{transaction_id}", json={"status": "completed" if index % 2 else "failed"}),
    )
    winners = {response.json()["status"] for response in responses if response.status_code == 200}
    assert len(winners) == 1
    loser_codes = {response.json()["code"] for response in responses if response.status_code != 200}
    assert loser_codes <= {"invalid_transition"}
    assert Counter(response.status_code for response in responses) == {200: 10, 409: 10}
    completed, balance, held = ledger_totals(db_session, user_id)
    assert held == 0 and balance == completed == (60 if winners == {"completed"} else 100)


def test_concurrent_requests_with_one_idempotency_key_write_one_row(http, db_session):
    user_id = funded_user(http, 1)
    purchase = {"user_id": str(user_id), "type": "purchase", "amount": "9.99", "credits": 500, "description": "pack"}
    responses = race(30, lambda index: http("POST", "/api/transactions", json=purchase, headers={"Idempotency-Key": "evt_race"}))
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.headers.get("Idempotent-Replayed") == "true" for response in responses) == 29
    completed, balance, _ = ledger_totals(db_session, user_id)
    assert completed == balance == 501


def _user_with_a_lapsed_hold(http, db_session, credits):
    """A user whose every credit is held by a hold that has lapsed but has not been expired yet."""
    user_id = funded_user(http, credits)
    hold = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -credits, "description": "crashed",
            "status": "pending", "hold_expires_in": 60}
    created = http("POST", "/api/transactions", json=hold)
    assert created.status_code == 201
    lapse(db_session, created.json()["id"], ago=timedelta(minutes=1))
    return user_id


def test_a_retry_racing_its_first_attempt_through_a_lapsed_hold_is_answered_as_the_first(http, db_session):
    # The first attempt releases the lapsed hold and spends; its retry (same key) must not be refused meanwhile.
    for round_ in range(15):
        user_id = _user_with_a_lapsed_hold(http, db_session, 10)
        spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "retried"}
        key = {"Idempotency-Key": f"lapsed-{round_}"}
        responses = race(2, lambda _: http("POST", "/api/transactions", json=spend, headers=key))
        assert sorted(response.status_code for response in responses) == [201, 201]
        assert responses[0].json() == responses[1].json()
        assert ledger_totals(db_session, user_id) == (0, 0, 0)


def test_spends_racing_for_credits_behind_a_lapsed_hold_are_not_refused(http, db_session):
    for _ in range(10):
        user_id = _user_with_a_lapsed_hold(http, db_session, 20)
        spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "generation"}
        responses = race(2, lambda _: http("POST", "/api/transactions", json=spend))
        assert [response.status_code for response in responses] == [201, 201]
        assert ledger_totals(db_session, user_id) == (0, 0, 0)


def test_racing_writes_of_one_user_are_stamped_in_the_order_they_wrote(http, db_session):
    """The books at an instant read the last posting before it: across four workers whose requests race
    for the balance row, a user's postings still carry running totals and stamps that never go back."""
    user_id = funded_user(http, 10_000)
    credits = [-(i % 7 + 1) if i % 3 else i + 1 for i in range(40)]
    kinds = ["usage" if c < 0 else "purchase" for c in credits]
    race(40, lambda i: http("POST", "/api/transactions", json={
        "user_id": str(user_id), "type": kinds[i], "amount": "0" if kinds[i] == "usage" else "1",
        "credits": credits[i], "description": "race"}))
    rows = db_session.execute(text(
        "SELECT credits, held, balance_after, held_after, created_at FROM lot_postings WHERE user_id = :u ORDER BY id"),
        {"u": user_id}).all()
    balance = held = 0
    for previous, row in zip([None, *rows], rows):
        balance, held = balance + row.credits, held + row.held
        assert (row.balance_after, row.held_after) == (balance, held)
        assert previous is None or row.created_at >= previous.created_at
    last = rows[-1].created_at + timedelta(microseconds=1)
    books = http("GET", f"/api/balance?user_id={user_id}&at={last.isoformat().replace('+00:00', 'Z')}").json()
    assert books["balance"] == balance == 10_000 + sum(credits)
