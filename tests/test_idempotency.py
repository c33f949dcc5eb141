"""Idempotency-Key: a retried write is applied once and answered the same way."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from transactions_service.extensions import db
from transactions_service.transactions.models import IdempotencyRecord, UserTransaction

from .conftest import make_app
from .helpers import Api


def rows(db_session, model=UserTransaction) -> int:
    return db_session.scalar(select(func.count()).select_from(model))


def test_same_key_and_body_replays_the_first_response_and_writes_nothing(api, db_session):
    user_id = api.register()
    first = api.purchase(user_id, key="evt_1", status="pending")
    again = api.purchase(user_id, key="evt_1", status="pending")
    assert first.status_code == again.status_code == 201
    assert again.data == first.data
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert rows(db_session) == 1


def test_replay_of_completed_purchase_credits_once(api):
    user_id = api.register()
    for _ in range(3):
        assert api.purchase(user_id, credits=500, key="evt_paid").status_code == 201
    assert api.balance(user_id)["balance"] == 500


def test_replay_returns_the_first_response_even_after_the_transaction_settled(api):
    user_id = api.register()
    first = api.purchase(user_id, key="evt_checkout", status="pending")
    assert api.settle(first.json["id"], "completed").status_code == 200
    again = api.purchase(user_id, key="evt_checkout", status="pending")
    assert again.json == first.json
    assert again.json["status"] == "pending"


def test_equivalent_spellings_of_the_same_body_replay(api, db_session):
    user_id = api.register()
    assert api.purchase(user_id, amount="9.90", key="evt_2").status_code == 201
    replay = api.purchase(user_id, amount=9.9, key="evt_2")
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert rows(db_session) == 1


@pytest.mark.parametrize(
    "changes",
    [{"credits": 501}, {"amount": "9.98"}, {"description": "other"}, {"status": "pending"}],
)
def test_same_key_with_a_different_body_is_422_and_writes_nothing(api, db_session, changes):
    user_id = api.register()
    assert api.purchase(user_id, key="evt_3").status_code == 201
    response = api.purchase(user_id, key="evt_3", **changes)
    assert response.status_code == 422
    assert response.json["code"] == "idempotency_key_reused"
    assert rows(db_session) == 1
    assert api.balance(user_id)["balance"] == 500


def test_same_key_for_another_user_is_a_different_body(api):
    first_user, second_user = api.register(), api.register()
    assert api.purchase(first_user, key="evt_4").status_code == 201
    assert api.purchase(second_user, key="evt_4").json["code"] == "idempotency_key_reused"


def test_keys_are_scoped_to_the_calling_service(api, service_token, db_session):
    user_id = api.register()
    payments = service_token("purchases:write", name="payment-service")
    other = service_token("purchases:write", name="partner-payments")
    assert api.purchase(user_id, key="evt_5", token=payments).status_code == 201
    response = api.purchase(user_id, key="evt_5", token=other)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert rows(db_session) == 2


def test_refused_request_is_not_recorded_so_a_retry_can_succeed_later(api, db_session):
    user_id = api.register()
    refused = api.usage(user_id, credits=-50, key="gen_1")
    assert refused.status_code == 409
    assert rows(db_session, IdempotencyRecord) == 0
    api.purchase(user_id, credits=100)
    retried = api.usage(user_id, credits=-50, key="gen_1")
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers


def test_invalid_request_with_a_key_records_nothing(api, db_session):
    user_id = api.register()
    assert api.purchase(user_id, credits=0, key="evt_6").status_code == 422
    assert rows(db_session, IdempotencyRecord) == 0
    assert api.purchase(user_id, key="evt_6").status_code == 201


@pytest.mark.parametrize(
    "key",
    ["", " leading", "trailing ", "x" * 256, "tab\there", "ünïcode"],
    ids=["empty", "leading-space", "trailing-space", "256-chars", "control", "non-ascii"],
)
def test_invalid_idempotency_key_is_422(api, db_session, key):
    user_id = api.register()
    headers = {"Authorization": f"Bearer {api.admin_token}", "Idempotency-Key": key}
    body = {"user_id": str(user_id), "type": "purchase", "amount": "1", "credits": 1, "description": "x"}
    response = api.client.post("/api/transactions", json=body, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["errors"]
    assert rows(db_session) == 0


def test_key_of_255_characters_is_accepted(api):
    assert api.purchase(api.register(), key="k" * 255).status_code == 201


def test_prune_deletes_only_old_keys(app, api, db_session):
    from datetime import timedelta

    from transactions_service.idempotency import prune
    from transactions_service.ids import utcnow

    user_id = api.register()
    api.purchase(user_id, key="evt_old")
    api.purchase(user_id, key="evt_new")
    db_session.execute(
        IdempotencyRecord.__table__.update()
        .where(IdempotencyRecord.key == "evt_old")
        .values(created_at=utcnow() - timedelta(days=100))
    )
    db_session.commit()
    with app.app_context():
        assert prune(utcnow() - timedelta(days=90)) == 1
    assert db_session.scalars(select(IdempotencyRecord.key)).all() == ["evt_new"]


def test_a_key_whose_first_request_is_still_running_is_409_after_the_lock_timeout(api, database_url, db_session):
    """Behind PgBouncer the lock timeout is the role's (5 s in make test-pooled), not this app's 200 ms."""
    user_id = api.register()
    impatient = make_app(database_url, DATABASE_LOCK_TIMEOUT_MS=200)
    # The first request, still in flight: its record is inserted and not yet committed.
    db_session.execute(IdempotencyRecord.__table__.insert().values(
        caller="ledger-admin", key="evt_in_flight", request_hash="first", status_code=201, response_body="{}",
        transaction_id=uuid.uuid4(),
    ))
    try:
        second = Api(impatient.test_client(), api.admin_token, api.user_token).purchase(user_id, key="evt_in_flight")
    finally:
        db_session.rollback()
        with impatient.app_context():
            db.engine.dispose()
    assert second.status_code == 409
    assert second.json["code"] == "idempotency_key_in_use"
    assert rows(db_session) == 0
