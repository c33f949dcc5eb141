"""POST /api/transactions: recording purchases and usage."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from transactions_service.ledger.models import UserTransaction

from .helpers import bearer, totals, without_postings


def count_rows(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(UserTransaction))


def test_completed_purchase_is_201_with_location_and_adds_credits(api):
    user_id = api.register()
    response = api.purchase(user_id, credits=500, amount="9.99", description="Starter pack")
    assert response.status_code == 201
    body = response.json
    assert response.headers["Location"] == f"/api/transactions/{body['id']}"
    assert body["user_id"] == str(user_id)
    assert body["type"] == "purchase"
    assert body["amount"] == "9.99"
    assert body["credits"] == 500
    assert body["description"] == "Starter pack"
    assert body["status"] == "completed"
    assert body["created_at"].endswith("Z") and body["created_at"] == body["updated_at"]
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 500, "held": 0, "available": 500}


def test_created_transaction_reads_back_identically(api, client):
    user_id = api.register()
    created = api.purchase(user_id).json
    fetched = client.get(f"/api/transactions/{created['id']}", headers=bearer(api.admin_token))
    assert without_postings(fetched.json) == created


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_purchase_that_is_not_completed_adds_nothing(api, status):
    user_id = api.register()
    assert api.purchase(user_id, status=status).status_code == 201
    assert api.balance(user_id)["balance"] == 0


def test_completed_usage_spends_available_credits(api):
    user_id = api.funded_user(100)
    response = api.usage(user_id, credits=-30)
    assert response.status_code == 201
    assert response.json["amount"] == "0.00"
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 70, "held": 0, "available": 70}


def test_pending_usage_holds_credits(api):
    user_id = api.funded_user(100)
    assert api.usage(user_id, credits=-30, status="pending").status_code == 201
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 100, "held": 30, "available": 70}


def test_failed_usage_is_recorded_without_touching_the_balance(api):
    user_id = api.register()
    assert api.usage(user_id, credits=-30, status="failed").status_code == 201
    assert api.balance(user_id)["balance"] == 0


def test_usage_may_spend_exactly_what_is_available(api):
    user_id = api.funded_user(100)
    assert api.usage(user_id, credits=-60, status="pending").status_code == 201
    assert api.usage(user_id, credits=-40).status_code == 201
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 60, "held": 60, "available": 0}


@pytest.mark.parametrize("status", ["completed", "pending"])
def test_usage_beyond_available_is_409_and_writes_nothing(api, db_session, status):
    user_id = api.funded_user(100)
    api.usage(user_id, credits=-60, status="pending")
    before = count_rows(db_session)
    response = api.usage(user_id, credits=-41, status=status)
    assert response.status_code == 409
    assert response.json["code"] == "insufficient_credits"
    assert count_rows(db_session) == before
    assert api.balance(user_id)["available"] == 40


def test_usage_by_a_registered_user_without_any_purchase_is_409(api):
    user_id = api.register()
    response = api.usage(user_id, credits=-1)
    assert response.status_code == 409
    assert response.json["code"] == "insufficient_credits"


@pytest.mark.parametrize(
    "create",
    [
        lambda api, user: api.purchase(user),
        lambda api, user: api.purchase(user, status="pending"),
        lambda api, user: api.usage(user, status="failed"),
        lambda api, user: api.usage(user),
    ],
    ids=["completed-purchase", "pending-purchase", "failed-usage", "usage"],
)
def test_unknown_user_is_422_and_writes_nothing(api, db_session, create):
    response = create(api, uuid.uuid4())
    assert response.status_code == 422
    assert response.json["code"] == "unknown_user"
    assert count_rows(db_session) == 0


VALID = {"type": "purchase", "amount": "9.99", "credits": 500, "description": "Starter pack"}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"type": "chargeback"}, "type"),
        ({"type": None}, "type"),
        ({"credits": 0}, "credits"),
        ({"credits": -5}, "credits"),
        ({"type": "usage", "credits": 5, "amount": "0"}, "credits"),
        ({"credits": 66.5}, "credits"),
        ({"credits": 10**400}, "credits"),
        ({"credits": "66"}, "credits"),
        ({"credits": True}, "credits"),
        ({"credits": 1_000_000_001}, "credits"),
        ({"credits": 10**30}, "credits"),
        ({"amount": "-1.00"}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": "9.999"}, "amount"),
        ({"amount": 9.999}, "amount"),
        ({"amount": "10000000000.00"}, "amount"),
        ({"amount": 1e300}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": None}, "amount"),
        ({"amount": [1]}, "amount"),
        ({"description": ""}, "description"),
        ({"description": "   "}, "description"),
        ({"description": "x" * 501}, "description"),
        ({"description": "null\x00byte"}, "description"),
        ({"description": 42}, "description"),
        ({"status": "refunded"}, "status"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"id": "7b0d3c1e-0000-4000-8000-000000000000"}, "id"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"balance": 10**9}, "balance"),
    ],
)
def test_invalid_body_is_422_naming_the_field_and_writes_nothing(api, db_session, changes, field):
    user_id = api.register()
    body = {"user_id": str(user_id), **VALID, **changes}
    response = api.client.post("/api/transactions", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422, response.json
    assert response.json["code"] == "validation_error"
    assert field in response.json["errors"]
    assert count_rows(db_session) == 0


@pytest.mark.parametrize("missing", ["user_id", "type", "amount", "credits", "description"])
def test_missing_required_field_is_422(api, missing):
    body = {"user_id": str(api.register()), **VALID}
    del body[missing]
    response = api.client.post("/api/transactions", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422
    assert missing in response.json["errors"]


@pytest.mark.parametrize(
    "amount, stored",
    [("0", "0.00"), ("5", "5.00"), ("9.9", "9.90"), (9.99, "9.99"), (12, "12.00"), ("9999999999.99", "9999999999.99")],
)
def test_amount_accepts_strings_and_numbers_with_at_most_two_decimals(api, amount, stored):
    response = api.purchase(api.register(), amount=amount)
    assert response.status_code == 201
    assert response.json["amount"] == stored


def test_integral_number_for_credits_is_the_integer(api):
    response = api.purchase(api.register(), credits=66.0)
    assert response.status_code == 201
    assert response.json["credits"] == 66


def test_largest_credit_change_is_accepted(api):
    user_id = api.register()
    assert api.purchase(user_id, credits=1_000_000_000).status_code == 201
    assert api.usage(user_id, credits=-1_000_000_000).status_code == 201


def test_description_of_500_characters_with_unicode_is_kept_exactly(api):
    description = "Génération d'image — 🚀 " + "x" * 477
    assert len(description) == 500
    response = api.purchase(api.register(), description=description)
    assert response.status_code == 201
    assert response.json["description"] == description


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
    ],
    ids=["syntax", "empty", "deeply-nested", "not-utf8"],
)
def test_body_that_is_not_json_is_400(api, payload, code):
    response = api.client.post(
        "/api/transactions", data=payload, headers={**bearer(api.admin_token), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json["code"] == code


@pytest.mark.parametrize("payload", [b"[]", b"42", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_422(api, payload):
    response = api.client.post(
        "/api/transactions", data=payload, headers={**bearer(api.admin_token), "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"


def test_body_over_one_mebibyte_is_413(api, db_session):
    body = b'{"description": "' + b"x" * (1024 * 1024) + b'"}'
    response = api.client.post(
        "/api/transactions", data=body, headers={**bearer(api.admin_token), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json["code"] == "payload_too_large"
    assert count_rows(db_session) == 0


def test_status_is_optional_and_defaults_to_completed(api):
    response = api.purchase(api.register())
    assert response.json["status"] == "completed"


def test_a_description_needing_json_escapes_reads_back_the_same_everywhere(api):
    # Control characters and line breaks are refused (test_strict_input.py); the rest needs escapes.
    description = 'Quote " backslash \\ slash / é 🚀 \u200f right-to-left mark \u00a0 no-break space'
    user_id = api.register()
    created = api.purchase(user_id, description=description, key="evt_escapes")
    assert created.status_code == 201
    assert created.json["description"] == description
    fetched = api.client.get(created.headers["Location"], headers=bearer(api.admin_token))
    assert without_postings(fetched.json) == created.json
    assert api.history(user_id).json["data"] == [created.json]
    replay = api.purchase(user_id, description=description, key="evt_escapes")
    assert replay.data == created.data
