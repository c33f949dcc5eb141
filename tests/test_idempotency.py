"""Idempotency-Key: a retried write is applied once and answered the same way."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from transactions_service.ledger.models import IdempotencyRecord, UserTransaction

from .conftest import ContractClient, make_app
from .helpers import bearer


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


def test_the_record_names_the_user_its_transaction_belongs_to(api, db_session):
    user_id = api.register()
    created = api.purchase(user_id, key="evt_user")
    record = db_session.scalars(select(IdempotencyRecord)).one()
    assert (record.user_id, str(record.transaction_id)) == (user_id, created.json["id"])


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

    from transactions_service.ledger.idempotency import prune
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


def test_replay_of_a_spend_answers_the_first_response_even_once_the_credits_are_gone(api, db_session):
    user_id = api.funded_user(credits=100)
    first = api.usage(user_id, credits=-100, key="gen_all")
    assert first.status_code == 201
    again = api.usage(user_id, credits=-100, key="gen_all")
    assert again.status_code == 201
    assert again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.balance(user_id)["available"] == 0
    assert rows(db_session) == 2


def test_a_refused_spend_leaves_no_record_so_the_key_works_once_credits_arrive(api, db_session):
    user_id = api.funded_user(credits=10)
    assert api.usage(user_id, credits=-50, key="gen_retry").status_code == 409
    assert rows(db_session, IdempotencyRecord) == 0
    assert api.purchase(user_id, credits=100).status_code == 201
    retried = api.usage(user_id, credits=-50, key="gen_retry")
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers


def _slow_app(database_url, contract):
    """The service with a short lock timeout, so that waiting on another request gives up quickly."""
    application = make_app(database_url, DATABASE_LOCK_TIMEOUT_MS=300)
    ContractClient.contract = contract
    application.test_client_class = ContractClient
    return application


def test_key_held_by_a_request_still_in_flight_is_409_in_use(api, engine, database_url, contract):
    user_id = api.funded_user(credits=100)
    body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -1, "description": "Image"}
    headers = {**bearer(api.admin_token), "Idempotency-Key": "gen_in_flight"}
    with engine.connect() as in_flight:  # another request has claimed the key and not committed yet
        in_flight.execute(
            text(
                "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id)"
                " VALUES ('ledger-admin', 'gen_in_flight', 'x', 201, '{}', gen_random_uuid())"
            )
        )
        response = _slow_app(database_url, contract).test_client().post("/api/transactions", json=body, headers=headers)
        in_flight.rollback()
    assert response.status_code == 409
    assert response.json["code"] == "idempotency_key_in_use"
    assert response.headers["Retry-After"] == "1"
    # The first attempt rolled back, so the same request now goes through as the first.
    assert api.create(key="gen_in_flight", **body).status_code == 201


def test_waiting_on_a_busy_balance_is_not_mistaken_for_a_busy_key(api, engine, database_url, contract):
    user_id = api.funded_user(credits=100)
    body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -1, "description": "Image"}
    headers = {**bearer(api.admin_token), "Idempotency-Key": "gen_busy_balance"}
    with engine.connect() as other:  # another spend of this user's holds the balance row
        other.execute(text("SELECT 1 FROM user_balances WHERE user_id = :id FOR UPDATE"), {"id": user_id})
        response = _slow_app(database_url, contract).test_client().post("/api/transactions", json=body, headers=headers)
        other.rollback()
    assert response.status_code == 503
    assert response.json["code"] == "balance_busy"
    assert response.headers["Retry-After"] == "1"
