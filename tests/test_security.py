"""The OWASP API Security Top 10 (2023), item by item, for this service.

docs/security.md maps each item to these tests and to the other modules
that cover it in more depth (test_auth.py, test_operations.py, test_fuzz.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from transactions_service import api_keys
from transactions_service.scopes import SERVICE_SCOPES

from .conftest import TEST_SECRET, make_app
from .helpers import bearer, without_postings

TRANSACTION = "01975c3e-8a41-7c2b-9f1e-3d5a6b7c8d90"
USER = "3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10"
OPERATIONS = [
    ("GET", "/api/transactions", None),
    ("POST", "/api/transactions", {"user_id": USER, "type": "purchase", "amount": "1", "credits": 1, "description": "x"}),
    ("GET", f"/api/transactions/{TRANSACTION}", None),
    ("PATCH", f"/api/transactions/{TRANSACTION}", {"status": "completed"}),
    ("GET", "/api/balance", None),
    ("PUT", f"/api/users/{USER}", None),
]
OPERATION_IDS = [f"{method} {path.split('/')[2]}{'/{id}' if path.count('/') > 2 else ''}" for method, path, _ in OPERATIONS]


def send(client, method, path, body, headers):
    return client.open(path, method=method, json=body, headers=headers)


def b64json(part):
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def unsigned(claims):
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims)}."


@contextmanager
def serving(payload):
    """A local HTTP server answering every GET with ``payload``; yields its URL and the paths requested."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def hs256_raw(header: str, payload: str) -> str:
    """Signed over the JSON text exactly as given, repeated members and all."""
    signing_input = f"{base64.urlsafe_b64encode(header.encode()).rstrip(b'=').decode()}." \
        f"{base64.urlsafe_b64encode(payload.encode()).rstrip(b'=').decode()}"
    signature = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def bad_tokens():
    now = int(time.time())
    valid_claims = {"sub": USER, "iat": now, "exp": now + 600}

    def signed(claims):
        return jwt.encode(claims, TEST_SECRET, algorithm="HS256")

    return {
        "none": None,
        "garbage": "not-a-token",
        "expired": signed({**valid_claims, "exp": now - 1}),
        "wrong-key": jwt.encode(valid_claims, "x" * 64, algorithm="HS256"),
        "alg-none": unsigned(valid_claims),
        "no-exp": signed({"sub": USER, "iat": now}),
        "no-iat": signed({"sub": USER, "exp": now + 600}),
        "exp-in-a-century": signed({**valid_claims, "exp": now + 100 * 365 * 86400}),
        "exp-2-to-the-62": signed({**valid_claims, "exp": 2**62}),
        "iat-in-the-future": signed({**valid_claims, "iat": now + 3600, "exp": now + 3700}),
        "sub-named-twice": hs256_raw('{"alg":"HS256"}', f'{{"sub":"{uuid.uuid4()}","sub":"{USER}","iat":{now},"exp":{now + 600}}}'),
        # What a service token used to be: now a user token whose sub is not a user id.
        "service-shaped-jwt": signed({"sub": "payment-service", "iat": now, "exp": now + 600,
                                      "scope": "purchases:write users:write transactions:read usage:write"}),
        "scope-split-on-unicode-space": signed({"sub": "payment-service", "iat": now, "exp": now + 600,
                                                "scope": "openid\u2003purchases:write"}),
        "unknown-api-key": api_keys.generate().text,
        "api-key-with-a-bad-checksum": api_keys.generate().text[:-1] + "0",
    }


# API1:2023 Broken Object Level Authorization


def test_api1_a_user_never_reads_another_users_transaction(api, client, user_token):
    owner, stranger = api.register(), api.register()
    transaction = api.purchase(owner).json
    response = client.get(f"/api/transactions/{transaction['id']}", headers=bearer(user_token(stranger)))
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/api/transactions", "/api/balance"])
def test_api1_a_user_never_reads_another_users_history_or_balance(api, client, user_token, path):
    owner, stranger = api.register(), api.register()
    api.purchase(owner)
    response = client.get(path, query_string={"user_id": str(owner)}, headers=bearer(user_token(stranger)))
    assert response.status_code == 403
    assert response.json["code"] == "forbidden"
    assert "data" not in response.json and "balance" not in response.json


def test_api1_a_user_never_settles_or_registers_anything(api, client, user_token):
    owner = api.register()
    pending = api.purchase(owner, status="pending").json
    token = bearer(user_token(owner))
    assert api.settle(pending["id"], "completed", token=user_token(owner)).status_code == 403
    assert client.put(f"/api/users/{uuid.uuid4()}", headers=token).status_code == 403
    assert api.balance(owner)["balance"] == 0


# API2:2023 Broken Authentication


@pytest.mark.parametrize("kind", sorted(bad_tokens()))
@pytest.mark.parametrize("method, path, body", OPERATIONS, ids=OPERATION_IDS)
def test_api2_every_operation_refuses_a_missing_or_bad_token(client, db_session, method, path, body, kind):
    token = bad_tokens()[kind]
    headers = {} if token is None else bearer(token)
    response = send(client, method, path, body, headers)
    assert response.status_code == 401
    assert response.json["code"] in ("missing_token", "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# API3:2023 Broken Object Property Level Authorization


@pytest.mark.parametrize(
    "field, value",
    [
        ("id", TRANSACTION),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("updated_at", "2020-01-01T00:00:00Z"),
        ("hold_expires_at", "2999-01-01T00:00:00Z"),
        ("failure_reason", None),
        ("balance", 1_000_000),
    ],
)
def test_api3_server_owned_fields_cannot_be_assigned_on_create(api, field, value):
    user_id = api.register()
    response = api.purchase(user_id, **{field: value})
    assert response.status_code == 422
    assert field in response.json["errors"]
    assert api.balance(user_id)["balance"] == 0


@pytest.mark.parametrize(
    "extra",
    [{"user_id": str(uuid.uuid4())}, {"credits": 10**6}, {"amount": "0"}, {"type": "purchase"}, {"status": "pending", "id": TRANSACTION}],
)
def test_api3_a_settlement_changes_nothing_but_the_status(api, client, extra):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-10, status="pending").json
    response = client.patch(
        f"/api/transactions/{hold['id']}", json={"status": "completed", **extra}, headers=bearer(api.admin_token)
    )
    assert response.status_code == 422
    assert without_postings(client.get(f"/api/transactions/{hold['id']}", headers=bearer(api.admin_token)).json) == hold


def test_api3_responses_expose_only_the_documented_fields(api):
    user_id = api.funded_user(100)
    usage = api.usage(user_id, status="pending").json
    assert set(usage) == {
        "id", "user_id", "type", "amount", "credits", "description", "status", "created_at", "updated_at",
        "hold_expires_at", "refunds", "reverses", "metadata", "reference",
    }


# API4:2023 Unrestricted Resource Consumption


@pytest.mark.parametrize(
    "limit, accepted",
    [(100, True), (101, False)],
)
def test_api4_page_size_is_bounded(api, limit, accepted):
    response = api.history(api.register(), limit=limit)
    assert (response.status_code == 200) is accepted


@pytest.mark.parametrize("length, accepted", [(500, True), (501, False)])
def test_api4_description_is_bounded(api, length, accepted):
    response = api.purchase(api.register(), description="d" * length)
    assert (response.status_code == 201) is accepted


@pytest.mark.parametrize("length, accepted", [(255, True), (256, False)])
def test_api4_idempotency_key_is_bounded(api, length, accepted):
    response = api.purchase(api.register(), key="k" * length)
    assert (response.status_code == 201) is accepted


@pytest.mark.parametrize("size, status", [(1024 * 1024, 422), (1024 * 1024 + 1, 413)])
def test_api4_body_is_bounded(api, size, status):
    prefix, suffix = b'{"description": "', b'"}'
    body = prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix
    assert len(body) == size
    response = api.client.post(
        "/api/transactions", data=body, headers={**bearer(api.admin_token), "Content-Type": "application/json"}
    )
    assert response.status_code == status


@pytest.mark.parametrize("length, status", [(2048, 422), (2049, 414)])
def test_api4_query_string_is_bounded(api, length, status):
    query = "type=" + "x" * (length - len("type="))
    response = api.client.get(f"/api/transactions?{query}", headers=bearer(api.admin_token))
    assert response.status_code == status


@pytest.mark.parametrize("count, status", [(12, 422), (13, 422)])
def test_api4_query_parameter_count_is_bounded(api, count, status):
    query = "&".join(f"p{index}=1" for index in range(count))
    response = api.client.get(f"/api/transactions?{query}", headers=bearer(api.admin_token))
    assert response.status_code == status
    expected = "_query" if count > 12 else "p0"
    assert expected in response.json["errors"]


def test_api4_every_history_filter_at_once_fits_the_parameter_bound(api):
    user_id = api.register()
    query = {"user_id": str(user_id), "limit": 5, "type": "usage", "status": "completed", "reference": "r",
             "created_after": "2026-01-01T00:00:00Z", "created_before": "2027-01-01T00:00:00Z",
             "metadata[a]": "1", "metadata[b]": "2", "metadata[c]": "3"}
    response = api.client.get("/api/transactions", query_string=query, headers=bearer(api.admin_token))
    assert (response.status_code, response.json["data"]) == (200, [])


def test_api4_authorization_header_is_bounded(client):
    assert client.get("/api/balance", headers=bearer("x" * 8186)).json["code"] == "invalid_token"
    response = client.get("/api/balance", headers=bearer("x" * 8186 + "y"))
    assert response.status_code == 401
    assert "longer than" in response.json["detail"]


@pytest.mark.parametrize("length, kept", [(128, True), (129, False)])
def test_api4_request_id_is_bounded(client, length, kept):
    supplied = "r" * length
    assert (client.get("/healthz", headers={"X-Request-ID": supplied}).headers["X-Request-ID"] == supplied) is kept


def test_api4_cursor_is_bounded(api):
    response = api.history(api.register(), cursor="1" * 17 + "-" + "0" * 32)
    assert response.status_code == 400


def test_api4_requests_per_caller_are_rate_limited(database_url, user_token):
    limited = make_app(database_url, RATELIMIT_DEFAULT="2 per minute").test_client()
    token = bearer(user_token(uuid.uuid4()))
    assert [limited.get("/api/balance", headers=token).status_code for _ in range(3)] == [200, 200, 429]


# API5:2023 Broken Function Level Authorization

SCOPE_MATRIX = {
    # operation: scopes that allow it
    "list": {"transactions:read"},
    "balance": {"transactions:read"},
    "get": {"transactions:read"},
    "create-purchase": {"purchases:write"},
    "create-usage": {"usage:write"},
    "settle-purchase": {"purchases:write"},
    "settle-usage": {"usage:write"},
    "register": {"users:write"},
    "create-grant": {"credits:grant"},
    "create-adjustment": {"credits:adjust"},
    "events": {"events:read"},
}


@pytest.mark.parametrize("scope", sorted(SERVICE_SCOPES))
@pytest.mark.parametrize("operation", sorted(SCOPE_MATRIX))
def test_api5_each_scope_grants_exactly_its_functions(api, client, service_token, scope, operation):
    user_id = api.funded_user(100)
    pending_purchase = api.purchase(user_id, status="pending").json
    pending_usage = api.usage(user_id, status="pending").json
    token = bearer(service_token(scope))
    calls = {
        "list": lambda: client.get(f"/api/transactions?user_id={user_id}", headers=token),
        "balance": lambda: client.get(f"/api/balance?user_id={user_id}", headers=token),
        "get": lambda: client.get(f"/api/transactions/{pending_usage['id']}", headers=token),
        "create-purchase": lambda: api.purchase(user_id, token=service_token(scope)),
        "create-usage": lambda: api.usage(user_id, token=service_token(scope)),
        "settle-purchase": lambda: api.settle(pending_purchase["id"], "completed", token=service_token(scope)),
        "settle-usage": lambda: api.settle(pending_usage["id"], "completed", token=service_token(scope)),
        "register": lambda: client.put(f"/api/users/{uuid.uuid4()}", headers=token),
        "create-grant": lambda: api.create(token=service_token(scope), user_id=user_id, type="grant", credits=5,
                                           description="Welcome bonus"),
        "create-adjustment": lambda: api.create(token=service_token(scope), user_id=user_id, type="adjustment",
                                                credits=5, description="Outage make-good"),
        "events": lambda: client.get("/api/events", headers=token),
    }
    response = calls[operation]()
    if scope in SCOPE_MATRIX[operation]:
        assert response.status_code in (200, 201), response.json
    else:
        assert response.status_code == 403
        assert response.json["code"] == "insufficient_scope"


def test_api5_a_user_token_carrying_every_scope_is_still_only_its_user(api, client):
    user_id, other = api.funded_user(100), api.funded_user(100)
    now = int(time.time())
    token = bearer(jwt.encode({"sub": str(user_id), "iat": now, "exp": now + 600,
                               "scope": " ".join(sorted(SERVICE_SCOPES))}, TEST_SECRET, algorithm="HS256"))
    pending = api.purchase(user_id, status="pending").json["id"]
    purchase = {"user_id": str(user_id), "type": "purchase", "amount": "0", "credits": 777, "description": "free"}
    assert client.post("/api/transactions", json=purchase, headers=token).status_code == 403
    assert client.patch(f"/api/transactions/{pending}", json={"status": "completed"}, headers=token).status_code == 403
    assert client.put(f"/api/users/{uuid.uuid4()}", headers=token).status_code == 403
    assert client.get(f"/api/balance?user_id={other}", headers=token).status_code == 403
    assert client.get(f"/api/transactions?user_id={other}", headers=token).status_code == 403
    assert client.get("/api/balance", headers=token).json["balance"] == 100
    assert api.balance(user_id)["balance"] == 100


@pytest.mark.parametrize("scope", sorted(SERVICE_SCOPES))
def test_api5_a_service_key_is_never_a_user(api, client, service_token, scope):
    owner = api.funded_user(100)
    key = bearer(service_token(scope, name=str(owner)))  # even a key named like the user
    for path in ("/api/balance", "/api/transactions"):
        response = client.get(path, headers=key)
        assert response.status_code in (403, 422)
        assert "balance" not in response.json and "data" not in response.json


# API6:2023 Unrestricted Access to Sensitive Business Flows


def test_api6_the_generation_service_cannot_mint_credits(api, service_token):
    user_id = api.register()
    generation = service_token("usage:write", "transactions:read", name="generation-service")
    assert api.purchase(user_id, credits=10**6, token=generation).status_code == 403
    assert api.balance(user_id)["balance"] == 0


def test_api6_a_retried_payment_webhook_credits_once(api):
    user_id = api.register()
    pending = api.purchase(user_id, credits=500, status="pending", key="evt_once").json
    for _ in range(5):
        api.purchase(user_id, credits=500, status="pending", key="evt_once")
        api.settle(pending["id"], "completed")
    assert api.balance(user_id)["balance"] == 500


def test_api6_spending_more_than_available_is_refused(api):
    user_id = api.funded_user(10)
    assert api.usage(user_id, credits=-11).status_code == 409
    assert api.balance(user_id)["available"] == 10


# API7:2023 Server Side Request Forgery


@pytest.fixture
def request_trap():
    """A local HTTP server that records any request made to it."""
    with serving(b'{"keys": []}') as trap:
        yield trap


def test_api7_urls_in_a_token_are_never_fetched(client, api, request_trap):
    url, hits = request_trap
    now = int(time.time())
    claims = {"sub": str(api.register()), "iat": now, "exp": now + 600}
    token = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"jku": url + "/jwks", "x5u": url + "/cert"})
    assert client.get("/api/balance", headers=bearer(token)).status_code == 200
    assert hits == []


# API8:2023 Security Misconfiguration


def test_api8_debug_is_off_and_errors_carry_no_internals(app, database_url):
    assert app.debug is False and app.config["PROPAGATE_EXCEPTIONS"] is False
    failing = make_app(database_url)

    @failing.get("/api/explode")
    def explode():
        raise ZeroDivisionError("internal detail: table user_balances")

    response = failing.test_client().get("/api/explode")
    body = response.get_data(as_text=True)
    assert response.status_code == 500 and "user_balances" not in body and "Traceback" not in body


def test_api8_cors_is_never_a_wildcard_and_never_with_credentials(client):
    response = client.options(
        "/api/balance", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert response.headers.get("Access-Control-Allow-Origin") in (None, "")
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("method", ["TRACE", "DELETE"])
def test_api8_unused_methods_are_refused(client, method):
    assert client.open("/api/transactions", method=method).status_code == 405


def test_api8_security_headers(client, user_token):
    response = client.get("/api/balance", headers=bearer(user_token(uuid.uuid4())))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_api8_the_service_refuses_to_start_without_a_secret(database_url):
    from transactions_service.config import ConfigError

    with pytest.raises(ConfigError):
        make_app(database_url, JWT_SECRET_KEY=None)


# API9:2023 Improper Inventory Management


def test_api9_every_route_is_in_the_published_contract(app, contract):
    documented = set(contract.spec["paths"])
    served = {rule.rule.replace("<uuid:", "{").replace(">", "}") for rule in app.url_map.iter_rules()}
    assert served == documented


# API10:2023 Unsafe Consumption of APIs


@pytest.mark.parametrize("payload", [b"<html>proxy error</html>", b"[1, 2]", b'{"keys": "nope"}'])
def test_api10_a_misbehaving_identity_provider_is_a_503_not_a_crash(database_url, payload):
    with serving(payload) as (url, _hits):
        app = make_app(database_url, JWT_SECRET_KEY=None, JWT_JWKS_URL=f"{url}/jwks", JWT_ALGORITHM="RS256")
        # The key set is fetched before the signature can be checked, so a dummy signature suffices.
        header, claims = {"alg": "RS256", "typ": "JWT", "kid": "a"}, {"sub": USER, "exp": int(time.time()) + 60}
        token = f"{b64json(header)}.{b64json(claims)}.{b64json('signature')}"
        response = app.test_client().get("/api/balance", headers=bearer(token))
    assert response.status_code == 503
    assert response.json["code"] == "identity_provider_unavailable"
