"""PATCH /api/transactions/<id>: the pending -> completed | failed state machine."""

from __future__ import annotations

import uuid

import pytest

from .helpers import bearer, totals


def test_completing_a_pending_purchase_adds_its_credits(api):
    user_id = api.register()
    pending = api.purchase(user_id, credits=500, status="pending").json
    response = api.settle(pending["id"], "completed")
    assert response.status_code == 200
    assert response.json["status"] == "completed"
    assert response.json["updated_at"] >= pending["updated_at"]
    assert {k: v for k, v in response.json.items() if k not in ("status", "updated_at")} == {
        k: v for k, v in pending.items() if k not in ("status", "updated_at")
    }
    assert api.balance(user_id)["balance"] == 500


def test_failing_a_pending_purchase_adds_nothing(api):
    user_id = api.register()
    pending = api.purchase(user_id, status="pending").json
    assert api.settle(pending["id"], "failed").json["status"] == "failed"
    assert api.balance(user_id)["balance"] == 0


def test_completing_a_pending_usage_consumes_its_hold(api):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    assert api.settle(hold["id"], "completed").status_code == 200
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 70, "held": 0, "available": 70}


def test_failing_a_pending_usage_releases_its_hold(api):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    assert api.settle(hold["id"], "failed").status_code == 200
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 100, "held": 0, "available": 100}


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_asking_again_for_the_status_it_has_is_200_without_change(api, status):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    first = api.settle(hold["id"], status)
    balance = api.balance(user_id)
    again = api.settle(hold["id"], status)
    assert again.status_code == 200
    assert again.json == first.json
    assert api.balance(user_id) == balance


@pytest.mark.parametrize(
    "created, requested",
    [("completed", "failed"), ("failed", "completed")],
)
def test_moving_a_settled_transaction_is_409(api, created, requested):
    user_id = api.funded_user(100)
    transaction = api.usage(user_id, credits=-30, status=created).json
    balance = api.balance(user_id)
    response = api.settle(transaction["id"], requested)
    assert response.status_code == 409
    assert response.json["code"] == "invalid_transition"
    assert api.balance(user_id) == balance


def test_completed_transaction_asked_to_complete_again_is_200(api):
    user_id = api.register()
    done = api.purchase(user_id, credits=10).json
    assert api.settle(done["id"], "completed").status_code == 200
    assert api.balance(user_id)["balance"] == 10


@pytest.mark.parametrize("body", [{"status": "pending"}, {"status": "done"}, {}, {"status": "failed", "credits": 5}])
def test_invalid_settlement_body_is_422(api, body):
    user_id = api.register()
    pending = api.purchase(user_id, status="pending").json
    response = api.client.patch(f"/api/transactions/{pending['id']}", json=body, headers=bearer(api.admin_token))
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"


def test_settling_an_unknown_transaction_is_404(api):
    response = api.settle(str(uuid.uuid4()), "completed")
    assert response.status_code == 404
    assert response.json["code"] == "not_found"


@pytest.mark.parametrize(
    "kind, scope",
    [("purchase", "usage:write"), ("usage", "purchases:write")],
)
def test_settling_needs_the_write_scope_of_the_transaction_type(api, service_token, kind, scope):
    user_id = api.funded_user(100)
    create = api.purchase if kind == "purchase" else api.usage
    pending = create(user_id, status="pending").json
    balance = api.balance(user_id)
    response = api.settle(pending["id"], "completed", token=service_token(scope))
    assert response.status_code == 403
    assert response.json["code"] == "insufficient_scope"
    assert api.balance(user_id) == balance
    assert api.client.get(
        f"/api/transactions/{pending['id']}", headers=bearer(api.admin_token)
    ).json["status"] == "pending"


def test_there_is_no_delete(api):
    user_id = api.register()
    created = api.purchase(user_id).json
    response = api.client.delete(f"/api/transactions/{created['id']}", headers=bearer(api.admin_token))
    assert response.status_code == 405
    assert response.json["code"] == "method_not_allowed"
