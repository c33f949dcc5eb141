"""Answers that say what a caller needs to know: the media type, strings for numbers, how many
credits are available, a busy balance, and a hold that is gone once a usage is settled."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from .conftest import ContractClient, make_app
from .helpers import bearer, lapse, totals

BODY = "user_id={user}&type=purchase&amount=1&credits=1&description=x"


# --- 415 for a body that is not sent as JSON -------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", None, "multipart/form-data; boundary=x"]
)
def test_a_body_not_sent_as_json_is_415_saying_what_to_send(api, db_session, content_type):
    user_id = api.register()
    headers = bearer(api.admin_token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = api.client.post("/api/transactions", data=BODY.format(user=user_id), headers=headers)
    assert response.status_code == 415
    assert response.json["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in response.json["detail"]
    assert db_session.execute(text("SELECT count(*) FROM user_transactions")).scalar() == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"])
def test_json_media_types_are_accepted(api, content_type):
    user_id = api.register()
    body = f'{{"user_id": "{user_id}", "type": "purchase", "amount": "1", "credits": 1, "description": "x"}}'
    response = api.client.post(
        "/api/transactions", data=body, headers={**bearer(api.admin_token), "Content-Type": content_type}
    )
    assert response.status_code == 201


def test_a_settlement_not_sent_as_json_is_415(api):
    pending = api.purchase(api.register(), status="pending").json
    response = api.client.patch(
        f"/api/transactions/{pending['id']}", data="status=completed",
        headers={**bearer(api.admin_token), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415


# --- messages that say more ------------------------------------------------------------------------


def test_credits_as_a_string_says_that_a_string_is_not_accepted(api):
    response = api.purchase(api.register(), credits="500")
    assert response.status_code == 422
    assert response.json["errors"]["credits"] == ['Must be a JSON number, not a string: send 500, not "500".']


def test_insufficient_credits_tells_a_reading_service_how_many_are_available(api, service_token):
    user_id = api.funded_user(30)
    reader = service_token("usage:write", "transactions:read")
    response = api.usage(user_id, credits=-50, token=reader)
    assert response.status_code == 409
    assert response.json["detail"] == f"User {user_id} has 30 available credits; this needs 50."


def test_insufficient_credits_tells_no_more_to_a_service_that_may_not_read_balances(api, service_token):
    user_id = api.funded_user(30)
    response = api.usage(user_id, credits=-50, token=service_token("usage:write"))
    assert response.status_code == 409
    assert response.json["detail"] == f"User {user_id} has fewer than 50 available credits."


def test_available_credits_in_the_refusal_count_holds_as_taken(api, service_token):
    user_id = api.funded_user(100)
    assert api.usage(user_id, credits=-80, status="pending").status_code == 201
    response = api.usage(user_id, credits=-50, token=service_token("usage:write", "transactions:read"))
    assert "has 20 available credits" in response.json["detail"]


# --- a balance held by other writes ----------------------------------------------------------------


@pytest.fixture
def impatient_client(database_url, contract):
    application = make_app(database_url, DATABASE_LOCK_TIMEOUT_MS=300)
    ContractClient.contract = contract
    application.test_client_class = ContractClient
    return application.test_client()


@pytest.mark.parametrize("key", [None, "gen_busy"])
def test_a_spend_waiting_too_long_on_a_busy_balance_is_503_balance_busy(api, engine, impatient_client, key):
    user_id = api.funded_user(100)
    body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -1, "description": "Image"}
    headers = {**bearer(api.admin_token), **({"Idempotency-Key": key} if key else {})}
    with engine.connect() as other:  # another write of this user's holds the balance row
        other.execute(text("SELECT 1 FROM user_balances WHERE user_id = :id FOR UPDATE"), {"id": user_id})
        response = impatient_client.post("/api/transactions", json=body, headers=headers)
        other.rollback()
    assert response.status_code == 503
    assert response.json["code"] == "balance_busy" and response.headers["Retry-After"] == "1"
    assert api.balance(user_id)["balance"] == 100
    assert impatient_client.post("/api/transactions", json=body, headers=headers).status_code == 201


def test_a_settlement_waiting_too_long_on_a_busy_balance_is_503_balance_busy(api, engine, impatient_client):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-10, status="pending").json
    with engine.connect() as other:
        other.execute(text("SELECT 1 FROM user_balances WHERE user_id = :id FOR UPDATE"), {"id": user_id})
        response = impatient_client.patch(
            f"/api/transactions/{hold['id']}", json={"status": "completed"}, headers=bearer(api.admin_token)
        )
        other.rollback()
    assert response.status_code == 503 and response.json["code"] == "balance_busy"
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 100, "held": 10, "available": 90}


# --- hold_expires_at only while a hold is held -------------------------------------------------------


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_a_settled_usage_shows_no_hold_expiry(api, outcome):
    hold = api.usage(api.funded_user(100), credits=-10, status="pending").json
    assert hold["hold_expires_at"] is not None
    settled = api.settle(hold["id"], outcome).json
    assert settled["hold_expires_at"] is None
    read = api.client.get(f"/api/transactions/{hold['id']}", headers=bearer(api.admin_token)).json
    assert read["hold_expires_at"] is None


def test_a_lapsed_hold_shows_no_hold_expiry_once_released(api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-10, status="pending").json
    lapse(db_session, hold["id"])
    assert api.settle(hold["id"], "failed").status_code == 200
    assert api.history(user_id).json["data"][0]["hold_expires_at"] is None


def test_a_replayed_hold_shows_the_expiry_it_was_recorded_with(api):
    user_id = api.funded_user(100)
    first = api.usage(user_id, credits=-10, status="pending", key="gen_expiry").json
    api.settle(first["id"], "completed")
    assert api.usage(user_id, credits=-10, status="pending", key="gen_expiry").json == first


# --- path parameters --------------------------------------------------------------------------------


def test_a_malformed_transaction_id_names_no_transaction(api):
    response = api.client.get(f"/api/transactions/{uuid.uuid4().hex}", headers=bearer(api.admin_token))
    assert response.status_code == 404 and response.json["code"] == "not_found"
