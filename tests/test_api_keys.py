"""API keys: the services' credentials (api_keys.py, `flask keys ...`).

A key is made once and shown once; the database keeps its hash; it can be
listed, revoked and rotated; a revoked or expired key stops working within
API_KEY_CACHE_SECONDS on every worker; and no key is ever a user.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from transactions_service import api_keys
from transactions_service.api_keys import ApiKey
from transactions_service.extensions import db
from transactions_service.scopes import READ_TRANSACTIONS, SERVICE_SCOPES, WRITE_PURCHASES, WRITE_USAGE

from .conftest import make_app, running_gunicorn
from .helpers import bearer

KEY_SHAPE = re.compile(r"tsk_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}")


def run(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def new_key(app, *args):
    result = run(app, "keys", "create", *args)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


@pytest.fixture
def fresh_app(database_url):
    """An app that reads a key's row on every request, so that revocation is seen at once."""
    return make_app(database_url, API_KEY_CACHE_SECONDS=0)


def balance_status(app, key, user_id=None):
    return app.test_client().get(f"/api/balance?user_id={user_id or uuid.uuid4()}", headers=bearer(key)).status_code


def stored(app, key):
    key_id = api_keys.parse(key)[0]
    with app.app_context():
        row = db.session.get(ApiKey, key_id)
        db.session.expunge_all()
        db.session.rollback()
    return row


# --- the key itself ---------------------------------------------------------------------------


def test_a_key_is_prefixed_names_its_id_and_holds_256_random_bits():
    first, second = api_keys.generate(), api_keys.generate()
    assert KEY_SHAPE.fullmatch(first.text) and first.text != second.text
    assert first.text.split("_")[1] == first.id
    assert 43 * math.log2(62) >= 256
    assert api_keys.parse(first.text)[0] == first.id


@pytest.mark.parametrize("position", [4, 10, 20, 50, -1])
def test_a_key_with_any_character_changed_fails_its_check(position):
    text = api_keys.generate().text
    replacement = "A" if text[position] != "A" else "B"
    changed = text[:position] + replacement + text[position + 1:] if position != -1 else text[:-1] + replacement
    assert api_keys.parse(changed) is None
    assert api_keys.parse(text[:-1]) is None and api_keys.parse(text + "A") is None


def test_create_prints_the_key_once_as_its_last_line_and_keeps_only_a_hash(app):
    result = run(app, "keys", "create", "--name", "payment-service", "--scope", "purchases:write users:write")
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert KEY_SHAPE.fullmatch(key)
    secret = key.split("_")[2][:43]
    row = stored(app, key)
    assert row.name == "payment-service" and row.scopes == ["purchases:write", "users:write"]
    assert row.secret_hash == hashlib.sha256(secret.encode()).digest()
    with app.app_context():
        dump = db.session.execute(text("SELECT api_keys::text FROM api_keys WHERE id = :id"), {"id": row.id}).scalar()
    assert secret not in dump and key not in dump


def test_a_new_key_works_at_once_with_exactly_its_scopes(app, api):
    user_id = api.funded_user(100)
    key = new_key(app, "--name", "generation-service", "--scope", "usage:write transactions:read")
    client = app.test_client()
    assert client.get(f"/api/balance?user_id={user_id}", headers=bearer(key)).status_code == 200
    assert api.usage(user_id, credits=-5, token=key).status_code == 201
    assert api.purchase(user_id, credits=10**6, token=key).status_code == 403
    assert client.put(f"/api/users/{uuid.uuid4()}", headers=bearer(key)).status_code == 403


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "svc", "--scope", "admin"], "unknown: admin"),
        (["--name", "svc", "--scope", ""], "one or more"),
        (["--name", "svc", "--scope", "usage:write\u2003transactions:read"], "unknown"),
        (["--name", "Payment Service", "--scope", "usage:write"], "key name"),
        (["--name", "", "--scope", "usage:write"], "key name"),
        (["--name", "svc", "--scope", "usage:write", "--expires-in", "soon"], "90d"),
    ],
)
def test_create_refuses_bad_names_and_scopes(app, args, message):
    result = run(app, "keys", "create", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "tsk_" not in result.output


def test_the_database_refuses_a_key_with_an_unknown_scope(app):
    new = api_keys.generate()
    with app.app_context():
        db.session.add(ApiKey(id=new.id, name="svc", secret_hash=new.secret_hash, scopes=["admin"]))
        with pytest.raises(IntegrityError, match="ck_api_keys_scopes_known"):
            db.session.commit()
        db.session.rollback()


def test_list_shows_every_key_of_a_name_and_never_a_secret(app):
    name = f"list-{uuid.uuid4().hex[:8]}"
    first = new_key(app, "--name", name, "--scope", "transactions:read")
    second = new_key(app, "--name", name, "--scope", "transactions:read")
    assert run(app, "keys", "revoke", api_keys.parse(first)[0]).exit_code == 0
    output = run(app, "keys", "list").output
    lines = [line for line in output.splitlines() if name in line]
    assert len(lines) == 2
    assert "revoked" in lines[0] and "active" in lines[1]
    assert output.splitlines()[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "LAST", "USED", "STATUS"]
    assert "tsk_" not in output and first.split("_")[2] not in output and second.split("_")[2] not in output


# --- revoking and rotating ------------------------------------------------------------------------


def test_a_revoked_key_stops_working(fresh_app):
    key = new_key(fresh_app, "--name", "svc", "--scope", "transactions:read")
    assert balance_status(fresh_app, key) == 200
    result = run(fresh_app, "keys", "revoke", api_keys.parse(key)[0])
    assert result.exit_code == 0 and "revoked 1 key" in result.output
    response = fresh_app.test_client().get(f"/api/balance?user_id={uuid.uuid4()}", headers=bearer(key))
    assert response.status_code == 401
    assert response.json["code"] == "invalid_token" and "revoked" in response.json["detail"]


def test_revoking_a_name_revokes_every_key_of_it(fresh_app):
    name = f"svc-{uuid.uuid4().hex[:8]}"
    keys = [new_key(fresh_app, "--name", name, "--scope", "transactions:read") for _ in range(3)]
    other = new_key(fresh_app, "--name", f"{name}-other", "--scope", "transactions:read")
    assert "revoked 3 key" in run(fresh_app, "keys", "revoke", name).output
    assert [balance_status(fresh_app, key) for key in keys] == [401, 401, 401]
    assert balance_status(fresh_app, other) == 200


@pytest.mark.parametrize("target", ["no-such-service", "AAAAAAAAAAAA"])
def test_revoking_what_does_not_exist_fails_and_says_so(app, target):
    result = run(app, "keys", "revoke", target)
    assert result.exit_code != 0 and "no key" in result.output


def test_rotation_keeps_the_old_key_for_the_grace_period_and_the_scopes(fresh_app):
    name = f"svc-{uuid.uuid4().hex[:8]}"
    old = new_key(fresh_app, "--name", name, "--scope", "purchases:write transactions:read")
    result = run(fresh_app, "keys", "rotate", name, "--grace", "1h")
    assert result.exit_code == 0, result.output
    new = result.output.strip().splitlines()[-1]
    assert KEY_SHAPE.fullmatch(new) and new != old
    assert balance_status(fresh_app, old) == 200 and balance_status(fresh_app, new) == 200
    assert stored(fresh_app, new).scopes == ["purchases:write", "transactions:read"]
    grace_end = stored(fresh_app, old).expires_at
    assert timedelta(minutes=59) < grace_end - datetime.now(timezone.utc) <= timedelta(hours=1)
    assert stored(fresh_app, new).expires_at is None


def test_after_the_grace_period_the_old_key_stops(fresh_app):
    name = f"svc-{uuid.uuid4().hex[:8]}"
    old = new_key(fresh_app, "--name", name, "--scope", "transactions:read")
    new = run(fresh_app, "keys", "rotate", name, "--grace", "0s").output.strip().splitlines()[-1]
    response = fresh_app.test_client().get(f"/api/balance?user_id={uuid.uuid4()}", headers=bearer(old))
    assert response.status_code == 401 and "expired" in response.json["detail"]
    assert balance_status(fresh_app, new) == 200


def test_an_expiry_is_checked_on_every_request_even_from_the_cache(database_url):
    caching = make_app(database_url, API_KEY_CACHE_SECONDS=3600)
    key = new_key(caching, "--name", "svc", "--scope", "transactions:read", "--expires-in", "2s")
    assert balance_status(caching, key) == 200
    time.sleep(2.1)
    assert balance_status(caching, key) == 401


def test_rotating_a_name_without_an_active_key_fails(app):
    result = run(app, "keys", "rotate", f"nobody-{uuid.uuid4().hex[:8]}")
    assert result.exit_code != 0 and "no active key" in result.output


def test_idempotency_keys_belong_to_the_service_so_they_survive_rotation(fresh_app, api):
    user_id = api.funded_user(100)
    name = f"gen-{uuid.uuid4().hex[:8]}"
    old = new_key(fresh_app, "--name", name, "--scope", "usage:write")
    new = run(fresh_app, "keys", "rotate", name, "--grace", "1h").output.strip().splitlines()[-1]
    client = fresh_app.test_client()
    body = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "Image"}
    first = client.post("/api/transactions", json=body, headers={**bearer(old), "Idempotency-Key": "job-1"})
    again = client.post("/api/transactions", json=body, headers={**bearer(new), "Idempotency-Key": "job-1"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    assert api.balance(user_id)["balance"] == 90


# --- what verification records and refuses ---------------------------------------------------------


def test_last_used_is_written_at_most_once_a_minute(fresh_app):
    key = new_key(fresh_app, "--name", "svc", "--scope", "transactions:read")
    assert stored(fresh_app, key).last_used_at is None
    balance_status(fresh_app, key)
    first_use = stored(fresh_app, key).last_used_at
    assert first_use is not None
    balance_status(fresh_app, key)
    assert stored(fresh_app, key).last_used_at == first_use
    with fresh_app.app_context():
        db.session.execute(
            update(ApiKey).where(ApiKey.id == api_keys.parse(key)[0]).values(last_used_at=first_use - timedelta(minutes=2))
        )
        db.session.commit()
    balance_status(fresh_app, key)
    assert stored(fresh_app, key).last_used_at > first_use


@pytest.mark.parametrize(
    "credentials, detail",
    [
        ("tsk_", "malformed"),
        ("tsk_" + "A" * 12 + "_" + "B" * 49, "malformed"),
        (None, "not one this service issued"),
    ],
)
def test_a_key_that_does_not_verify_is_401(app, credentials, detail):
    credentials = credentials or api_keys.generate().text  # well-formed, never stored
    response = app.test_client().get(f"/api/balance?user_id={uuid.uuid4()}", headers=bearer(credentials))
    assert response.status_code == 401
    assert response.json["code"] == "invalid_token" and detail in response.json["detail"]


def test_the_right_id_with_another_secret_is_refused(app):
    key = new_key(app, "--name", "svc", "--scope", "transactions:read")
    assert balance_status(app, key) == 200  # its row is cached now
    forged_body = key[: 4 + 12 + 1] + api_keys.generate().text[17:17 + 43]
    forged = forged_body + api_keys._check(forged_body)
    assert api_keys.parse(forged) is not None
    assert balance_status(app, forged) == 401


def test_a_key_named_as_a_user_is_still_a_service(app, api):
    owner = api.funded_user(300)
    key = new_key(app, "--name", str(owner), "--scope", WRITE_USAGE)
    client = app.test_client()
    # Not the user: reading "its own" balance needs transactions:read and the user's id like any service.
    response = client.get("/api/balance", headers=bearer(key))
    assert response.status_code == 403 and response.json["code"] == "insufficient_scope"
    reader = new_key(app, "--name", str(owner), "--scope", READ_TRANSACTIONS)
    response = client.get("/api/balance", headers=bearer(reader))
    assert response.status_code == 422 and "user_id" in response.json["errors"]


def test_a_key_is_never_read_as_a_jwt(app):
    key = new_key(app, "--name", "svc", "--scope", " ".join(sorted(SERVICE_SCOPES)))
    response = app.test_client().get("/api/balance", headers=bearer(key.replace("tsk_", "eyJ", 1)))
    assert response.status_code == 401


def test_logs_name_the_key_and_never_show_it(app, api, capsys):
    key = new_key(app, "--name", "log-check", "--scope", WRITE_PURCHASES)
    api.purchase(api.register(), token=key)
    logged = capsys.readouterr().err
    assert '"caller": "log-check"' in logged and api_keys.parse(key)[0] in logged
    assert key not in logged and key.split("_")[2] not in logged


# --- across gunicorn workers -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_revoked_key_stops_on_every_gunicorn_worker_within_the_cache_time(database_url, tmp_path, app):
    key = new_key(app, "--name", "fleet", "--scope", READ_TRANSACTIONS)
    with running_gunicorn(database_url, tmp_path, workers=4, API_KEY_CACHE_SECONDS="1") as (_process, base_url):

        def statuses():
            # A new connection per request, so that every worker answers some of them.
            return {
                requests.get(f"{base_url}/api/balance?user_id={uuid.uuid4()}", headers=bearer(key), timeout=10).status_code
                for _ in range(40)
            }

        assert statuses() == {200}
        assert run(app, "keys", "revoke", "fleet").exit_code == 0
        time.sleep(1.2)
        assert statuses() == {401}
