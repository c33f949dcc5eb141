"""PUT /api/users/<id>: registering users."""

from __future__ import annotations

import uuid

import pytest

from .helpers import bearer


def test_registering_a_new_user_is_201_then_200(client, service_token):
    token = service_token("users:write")
    user_id = uuid.uuid4()
    first = client.put(f"/api/users/{user_id}", headers=bearer(token))
    second = client.put(f"/api/users/{user_id}", headers=bearer(token))
    assert first.status_code == 201
    assert second.status_code == 200
    assert first.json == second.json
    assert first.json["id"] == str(user_id)


def test_registration_accepts_an_empty_object(client, service_token):
    response = client.put(f"/api/users/{uuid.uuid4()}", json={}, headers=bearer(service_token("users:write")))
    assert response.status_code == 201


def test_registration_rejects_unknown_fields(client, service_token):
    response = client.put(
        f"/api/users/{uuid.uuid4()}", json={"balance": 100}, headers=bearer(service_token("users:write"))
    )
    assert response.status_code == 422
    assert "balance" in response.json["errors"]


def test_user_inserted_directly_by_the_identity_side_is_usable(api, db_session):
    from sqlalchemy import text

    user_id = uuid.uuid4()
    db_session.execute(text("INSERT INTO users (id) VALUES (:id)"), {"id": user_id})
    db_session.commit()
    assert api.purchase(user_id).status_code == 201
    assert api.register(user_id) == user_id


@pytest.mark.parametrize("identifier", ["not-a-uuid", "42", "3f1c2a9e6b7d4c1e9a550d2b8e7f4a10"])
def test_malformed_user_id_is_422_naming_the_path_parameter(client, service_token, db_session, identifier):
    response = client.put(f"/api/users/{identifier}", headers=bearer(service_token("users:write")))
    assert response.status_code == 422
    assert response.json["code"] == "validation_error" and "user_id" in response.json["errors"]
