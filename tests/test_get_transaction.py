"""GET /api/transactions/<id>."""

from __future__ import annotations

import uuid

import pytest

from .helpers import bearer, without_postings


def test_owner_reads_its_transaction(api, client, user_token):
    user_id = api.register()
    created = api.purchase(user_id).json
    response = client.get(f"/api/transactions/{created['id']}", headers=bearer(user_token(user_id)))
    assert response.status_code == 200
    assert without_postings(response.json) == created


def test_another_users_transaction_is_404_exactly_like_a_missing_one(api, client, user_token):
    owner, stranger = api.register(), api.register()
    created = api.purchase(owner).json
    theirs = client.get(f"/api/transactions/{created['id']}", headers=bearer(user_token(stranger)))
    missing = client.get(f"/api/transactions/{uuid.uuid4()}", headers=bearer(user_token(stranger)))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["code"] == missing.json["code"] == "not_found"


def test_service_with_read_scope_reads_any_transaction(api, client, service_token):
    created = api.purchase(api.register()).json
    response = client.get(f"/api/transactions/{created['id']}", headers=bearer(service_token("transactions:read")))
    assert response.status_code == 200


@pytest.mark.parametrize("identifier", ["42", "not-a-uuid", "0" * 36])
def test_malformed_id_is_404(client, api, identifier):
    response = client.get(f"/api/transactions/{identifier}", headers=bearer(api.admin_token))
    assert response.status_code == 404
