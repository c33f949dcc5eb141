"""Authentication and authorization: who may call, and what each caller may do.

Tokens are built here with PyJWT (and by hand where PyJWT refuses to build
them), the way an identity provider or an attacker would, rather than with
``issue_token``, so that the service is tested against what arrives on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask

from transactions_service import create_app
from transactions_service.auth import Caller, VerifiedTokens
from transactions_service.scopes import (
    READ_TRANSACTIONS,
    SERVICE_SCOPES,
    WRITE_PURCHASES,
    WRITE_USAGE,
    WRITE_USERS,
)
from transactions_service.config import ConfigError
from transactions_service.extensions import db

from .conftest import TEST_SECRET, create_key, make_app
from .helpers import bearer

PROBLEM = "application/problem+json"
AUDIENCE = "transactions"
ISSUER = "https://idp.example"
# A URL that is never connected to: startup fails before any database work.
UNUSED_DATABASE_URL = "postgresql://ledger@127.0.0.1:1/ledger"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KEY_B = ec.generate_private_key(ec.SECP256R1())


# --- building tokens -------------------------------------------------------------------------


def public_pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(subject: Any, **extra: Any) -> dict[str, Any]:
    """What a minimal identity provider puts in a token: sub, iat, exp."""
    now = int(time.time())
    return {"sub": subject, "iat": now, "exp": now + 300, **extra}


def sign(payload: dict[str, Any], key: Any = TEST_SECRET, algorithm: str = "HS256", **headers: Any) -> str:
    return pyjwt.encode(payload, key, algorithm=algorithm, headers=headers or None)


def unsigned(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token, which PyJWT will only build with an empty key; crafted by hand instead."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(payload)}."


def hmac_signed_with(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with any bytes (PyJWT refuses PEM keys as HMAC secrets)."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def hmac_signed_raw(header: str, payload: str, secret: bytes) -> str:
    """An HS256 token over header and payload JSON text exactly as given (PyJWT would re-serialise them)."""
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def with_tampered_subject(token: str, subject: str) -> str:
    header, payload, signature = token.split(".")
    claims_ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims_["sub"] = subject
    return f"{header}.{b64url_json(claims_)}.{signature}"


# --- assertions ------------------------------------------------------------------------------


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.data)
    assert response.mimetype == PROBLEM
    assert response.json["status"] == status
    assert response.json["code"] == code, response.json


def assert_unauthorized(response: Any, code: str = "invalid_token") -> None:
    assert_problem(response, 401, code)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers


def assert_reads_balance_of(response: Any, user_id: uuid.UUID) -> None:
    assert response.status_code == 200, response.data
    assert response.json["user_id"] == str(user_id)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def build_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Apps with other key configurations, on the session's database."""
    built: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        application = make_app(database_url, **overrides)
        built.append(application)
        return application

    yield build
    if built:
        # Every app shares one JWTManager, so the key resolver of the app built
        # last verifies tokens for all of them (see
        # test_each_app_verifies_tokens_with_its_own_key). Building an app with
        # the session's configuration puts the session app's key back for the
        # tests that follow.
        built.append(make_app(database_url))
    for application in built:
        with application.app_context():
            db.engine.dispose()


class JwksServer:
    """An identity provider's JWKS endpoint whose published keys a test can change."""

    path = "/.well-known/jwks.json"

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.raw_body: bytes | None = None
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.fetches += 1
                if self.path != server.path:
                    self.send_error(404)
                    return
                body = server.raw_body if server.raw_body is not None else json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def publish(self, *keys: tuple[str, Any]) -> None:
        """Publish the public halves of ``(kid, private_key)`` pairs."""
        published = []
        for kid, private_key in keys:
            jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        self.keys = published


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


@pytest.fixture
def jwks_app(build_app: Callable[..., Flask], jwks_server: JwksServer) -> Flask:
    return build_app(
        JWT_SECRET_KEY=None,
        JWT_JWKS_URL=jwks_server.url,
        JWT_ALGORITHM="RS256",
        JWT_JWKS_REFRESH_COOLDOWN_SECONDS=0,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rs256(user_id: uuid.UUID, kid: str | None, key: Any = RSA_KEY) -> str:
    headers = {} if kid is None else {"kid": kid}
    return sign(claims(str(user_id)), key, "RS256", **headers)


# --- 1. requests without a valid token -------------------------------------------------------


def _no_header(user_id: str) -> dict[str, str]:
    return {}


def _basic(user_id: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user_id}:password".encode()).decode()}


def _token_scheme_only(user_id: str) -> dict[str, str]:
    return {"Authorization": "Bearer"}


def _garbage(user_id: str) -> dict[str, str]:
    return bearer("not-a-jwt")


def _three_garbage_segments(user_id: str) -> dict[str, str]:
    return bearer("aaaa.bbbb.cccc")


def _other_secret(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id), secrets.token_hex(32)))


def _expired(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id, iat=int(time.time()) - 120, exp=int(time.time()) - 60)))


def _no_exp(user_id: str) -> dict[str, str]:
    return bearer(sign({"sub": user_id, "iat": int(time.time())}))


def _exp_not_a_number(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id, exp="9999999999")))


def _not_yet_valid(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id, nbf=int(time.time()) + 3600)))


def _alg_none(user_id: str) -> dict[str, str]:
    return bearer(unsigned(claims(user_id)))


def _hs512_with_the_right_secret(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id), TEST_SECRET, "HS512"))


def _rs256_token(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id), RSA_KEY, "RS256"))


def _subject_not_a_uuid(user_id: str) -> dict[str, str]:
    return bearer(sign(claims("user_2abc")))


def _subject_a_number(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(12345)))


def _no_subject(user_id: str) -> dict[str, str]:
    payload = claims(user_id)
    del payload["sub"]
    return bearer(sign(payload))


def _tampered_subject(user_id: str) -> dict[str, str]:
    return bearer(with_tampered_subject(sign(claims(str(uuid.uuid4()))), user_id))


def _no_iat(user_id: str) -> dict[str, str]:
    payload = claims(user_id)
    del payload["iat"]
    return bearer(sign(payload))


def _iat_not_a_number(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id, iat="yesterday")))


def _iat_in_the_future(user_id: str) -> dict[str, str]:
    later = int(time.time()) + 3600
    return bearer(sign(claims(user_id, iat=later, exp=later + 60)))


def _lives_a_second_too_long(user_id: str) -> dict[str, str]:
    now = int(time.time())
    return bearer(sign(claims(user_id, iat=now, exp=now + 86_401)))


def _expires_in_a_century(user_id: str) -> dict[str, str]:
    now = int(time.time())
    return bearer(sign(claims(user_id, iat=now, exp=now + 100 * 365 * 86_400)))


def _expires_at_2_to_the_62(user_id: str) -> dict[str, str]:
    return bearer(sign(claims(user_id, exp=2**62)))


def _repeated_claim(user_id: str) -> dict[str, str]:
    # Which "sub" counts would depend on the parser: the token is refused instead.
    now = int(time.time())
    payload = f'{{"sub":"{uuid.uuid4()}","sub":"{user_id}","iat":{now},"exp":{now + 300}}}'
    return bearer(hmac_signed_raw('{"alg":"HS256","typ":"JWT"}', payload, TEST_SECRET.encode()))


def _repeated_header_member(user_id: str) -> dict[str, str]:
    header = '{"alg":"HS256","alg":"none","typ":"JWT"}'
    return bearer(hmac_signed_raw(header, json.dumps(claims(user_id)), TEST_SECRET.encode()))


def _bearer_with_two_tokens(user_id: str) -> dict[str, str]:
    token = sign(claims(user_id))
    return {"Authorization": f"Bearer {token} {token}"}


def _token_in_query_string_only(user_id: str) -> dict[str, str]:
    return {}  # the test sends the token as ?jwt= for this case


TOKEN_MATRIX = [
    pytest.param(_no_header, "missing_token", id="no-authorization-header"),
    pytest.param(_basic, "missing_token", id="basic-scheme"),
    pytest.param(_token_scheme_only, "invalid_token", id="bearer-without-token"),
    pytest.param(_garbage, "invalid_token", id="bearer-garbage"),
    pytest.param(_three_garbage_segments, "invalid_token", id="bearer-three-garbage-segments"),
    pytest.param(_other_secret, "invalid_token", id="signed-with-another-secret"),
    pytest.param(_tampered_subject, "invalid_token", id="payload-tampered-after-signing"),
    pytest.param(_expired, "invalid_token", id="expired"),
    pytest.param(_no_exp, "invalid_token", id="without-exp"),
    pytest.param(_exp_not_a_number, "invalid_token", id="exp-not-a-number"),
    pytest.param(_not_yet_valid, "invalid_token", id="nbf-in-the-future"),
    pytest.param(_alg_none, "invalid_token", id="alg-none"),
    pytest.param(_hs512_with_the_right_secret, "invalid_token", id="hs512-on-an-hs256-service"),
    pytest.param(_rs256_token, "invalid_token", id="rs256-on-an-hs256-service"),
    pytest.param(_subject_not_a_uuid, "invalid_token", id="sub-not-a-uuid"),
    pytest.param(_subject_a_number, "invalid_token", id="sub-a-number"),
    pytest.param(_no_subject, "invalid_token", id="without-sub"),
    pytest.param(_no_iat, "invalid_token", id="without-iat"),
    pytest.param(_iat_not_a_number, "invalid_token", id="iat-not-a-number"),
    pytest.param(_iat_in_the_future, "invalid_token", id="iat-in-the-future"),
    pytest.param(_lives_a_second_too_long, "invalid_token", id="exp-a-second-beyond-the-maximum-lifetime"),
    pytest.param(_expires_in_a_century, "invalid_token", id="exp-in-a-century"),
    pytest.param(_expires_at_2_to_the_62, "invalid_token", id="exp-2-to-the-62"),
    pytest.param(_repeated_claim, "invalid_token", id="payload-names-sub-twice"),
    pytest.param(_repeated_header_member, "invalid_token", id="header-names-alg-twice"),
    pytest.param(_bearer_with_two_tokens, "invalid_token", id="bearer-with-two-tokens"),
]


@pytest.mark.parametrize(("headers_for", "code"), TOKEN_MATRIX)
def test_request_without_a_valid_token_is_401(client: Any, headers_for: Callable[[str], dict[str, str]], code: str) -> None:
    response = client.get("/api/balance", headers=headers_for(str(uuid.uuid4())))

    assert_unauthorized(response, code)


def test_token_in_the_query_string_is_not_accepted(client: Any) -> None:
    token = sign(claims(str(uuid.uuid4())))

    response = client.get("/api/balance", query_string={"jwt": token, "access_token": token})

    assert_unauthorized(response, "missing_token")


def test_valid_user_token_reads_own_balance(client: Any, user_token: Callable[..., str]) -> None:
    user_id = uuid.uuid4()

    response = client.get("/api/balance", headers=bearer(user_token(user_id)))

    assert_reads_balance_of(response, user_id)


def test_rs256_service_rejects_hs256_token_keyed_with_its_public_key(
    build_app: Callable[..., Flask],
) -> None:
    pem = public_pem(RSA_KEY)
    application = build_app(JWT_SECRET_KEY=None, JWT_PUBLIC_KEY=pem, JWT_ALGORITHM="RS256")
    forged = hmac_signed_with(claims(str(uuid.uuid4())), pem.encode())

    response = application.test_client().get("/api/balance", headers=bearer(forged))

    assert_unauthorized(response)


def test_each_app_verifies_tokens_with_its_own_key(build_app: Callable[..., Flask]) -> None:
    first_secret, second_secret = secrets.token_hex(32), secrets.token_hex(32)
    first = build_app(JWT_SECRET_KEY=first_secret)
    build_app(JWT_SECRET_KEY=second_secret)
    user_id = uuid.uuid4()

    response = first.test_client().get("/api/balance", headers=bearer(sign(claims(str(user_id)), first_secret)))

    assert_reads_balance_of(response, user_id)


# --- 1b. what a valid user token may be: any scheme case, a bounded life ----------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(client: Any, scheme: str) -> None:
    user_id = uuid.uuid4()

    response = client.get("/api/balance", headers={"Authorization": f"{scheme} {sign(claims(str(user_id)))}"})

    assert_reads_balance_of(response, user_id)


def test_a_token_living_exactly_the_maximum_lifetime_is_accepted(client: Any) -> None:
    user_id, now = uuid.uuid4(), int(time.time())

    response = client.get("/api/balance", headers=bearer(sign(claims(str(user_id), iat=now, exp=now + 86_400))))

    assert_reads_balance_of(response, user_id)


def test_the_maximum_lifetime_is_configurable(build_app: Callable[..., Flask]) -> None:
    application = build_app(JWT_MAX_LIFETIME_SECONDS=600)
    now = int(time.time())

    response = application.test_client().get(
        "/api/balance", headers=bearer(sign(claims(str(uuid.uuid4()), iat=now, exp=now + 601)))
    )

    assert_unauthorized(response)
    assert "600" in response.json["detail"]


def test_nbf_in_the_past_is_accepted(client: Any) -> None:
    user_id = uuid.uuid4()

    response = client.get("/api/balance", headers=bearer(sign(claims(str(user_id), nbf=int(time.time()) - 5))))

    assert_reads_balance_of(response, user_id)


# --- 1c. a user token is a user, whatever it claims ------------------------------------------


def every_scope_claim() -> str:
    return " ".join(sorted(SERVICE_SCOPES))


def test_a_user_token_carrying_every_scope_cannot_mint_credits(api: Any, client: Any) -> None:
    user_id = api.register()
    token = sign(claims(str(user_id), scope=every_scope_claim()))
    body = {"user_id": str(user_id), "type": "purchase", "amount": "0", "credits": 777, "description": "free"}

    response = client.post("/api/transactions", json=body, headers=bearer(token))

    assert_problem(response, 403, "insufficient_scope")
    assert api.balance(user_id)["balance"] == 0


def test_a_user_token_carrying_every_scope_cannot_read_another_user(api: Any, client: Any) -> None:
    owner = api.funded_user(500)
    token = sign(claims(str(uuid.uuid4()), scope=every_scope_claim()))

    for path in ("/api/balance", "/api/transactions"):
        response = client.get(path, query_string={"user_id": str(owner)}, headers=bearer(token))
        assert_problem(response, 403, "forbidden")


def test_a_user_token_carrying_every_scope_cannot_settle_or_register(api: Any, client: Any) -> None:
    user_id = api.register()
    pending = api.purchase(user_id, status="pending").json["id"]
    token = bearer(sign(claims(str(user_id), scope=every_scope_claim())))

    assert_problem(client.patch(f"/api/transactions/{pending}", json={"status": "completed"}, headers=token),
                   403, "insufficient_scope")
    assert_problem(client.put(f"/api/users/{uuid.uuid4()}", headers=token), 403, "insufficient_scope")
    assert api.balance(user_id)["balance"] == 0


@pytest.mark.parametrize("scope", ["purchases:write", "openid\u2003purchases:write", every_scope_claim()])
def test_a_service_shaped_jwt_is_not_a_service(api: Any, client: Any, scope: str) -> None:
    user_id = api.register()
    token = sign(claims("payment-service", scope=scope))
    body = {"user_id": str(user_id), "type": "purchase", "amount": "0", "credits": 777, "description": "free"}

    response = client.post("/api/transactions", json=body, headers=bearer(token))

    assert_unauthorized(response)
    assert api.balance(user_id)["balance"] == 0


def test_startup_without_an_audience_warns(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="transactions_service"):
        make_app(database_url)
    assert any("JWT_DECODE_AUDIENCE is not set" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="transactions_service"):
        make_app(database_url, JWT_DECODE_AUDIENCE=AUDIENCE)
    assert not any("JWT_DECODE_AUDIENCE" in record.getMessage() for record in caplog.records)


# --- 2. tokens from a third-party identity provider ------------------------------------------


def test_minimal_third_party_token_is_accepted(client: Any) -> None:
    """Only sub, iat and exp: no type, fresh, jti or csrf claims as flask-jwt-extended would add."""
    user_id = uuid.uuid4()
    token = pyjwt.encode(claims(str(user_id)), TEST_SECRET, algorithm="HS256")

    response = client.get("/api/balance", headers=bearer(token))

    assert_reads_balance_of(response, user_id)


# --- 3. audience and issuer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param({"aud": AUDIENCE, "iss": ISSUER}, 200, id="matching-aud-and-iss"),
        pytest.param({"aud": ["billing", AUDIENCE], "iss": ISSUER}, 200, id="aud-list-containing-ours"),
        pytest.param({"aud": "billing", "iss": ISSUER}, 401, id="wrong-aud"),
        pytest.param({"aud": ["billing", "search"], "iss": ISSUER}, 401, id="aud-list-without-ours"),
        pytest.param({"iss": ISSUER}, 401, id="missing-aud"),
        pytest.param({"aud": AUDIENCE, "iss": "https://evil.example"}, 401, id="wrong-iss"),
        pytest.param({"aud": AUDIENCE}, 401, id="missing-iss"),
    ],
)
def test_service_with_audience_and_issuer_checks_them(
    build_app: Callable[..., Flask], extra: dict[str, Any], status: int
) -> None:
    application = build_app(JWT_DECODE_AUDIENCE=AUDIENCE, JWT_DECODE_ISSUER=ISSUER)
    user_id = uuid.uuid4()

    response = application.test_client().get("/api/balance", headers=bearer(sign(claims(str(user_id), **extra))))

    if status == 200:
        assert_reads_balance_of(response, user_id)
    else:
        assert_unauthorized(response)


# --- 4. asymmetric keys configured as JWT_PUBLIC_KEY -----------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [pytest.param("RS256", RSA_KEY, id="RS256"), pytest.param("ES256", EC_KEY, id="ES256")],
)
def test_public_key_service_accepts_tokens_signed_with_its_private_key(
    build_app: Callable[..., Flask], algorithm: str, key: Any
) -> None:
    application = build_app(JWT_SECRET_KEY=None, JWT_PUBLIC_KEY=public_pem(key), JWT_ALGORITHM=algorithm)
    user_id = uuid.uuid4()

    response = application.test_client().get("/api/balance", headers=bearer(sign(claims(str(user_id)), key, algorithm)))

    assert_reads_balance_of(response, user_id)


@pytest.mark.parametrize(
    ("algorithm", "key", "signer"),
    [
        pytest.param("RS256", RSA_KEY, RSA_KEY_B, id="RS256"),
        pytest.param("ES256", EC_KEY, EC_KEY_B, id="ES256"),
    ],
)
def test_public_key_service_rejects_tokens_signed_with_another_key(
    build_app: Callable[..., Flask], algorithm: str, key: Any, signer: Any
) -> None:
    application = build_app(JWT_SECRET_KEY=None, JWT_PUBLIC_KEY=public_pem(key), JWT_ALGORITHM=algorithm)

    response = application.test_client().get(
        "/api/balance", headers=bearer(sign(claims(str(uuid.uuid4())), signer, algorithm))
    )

    assert_unauthorized(response)


# --- 5. keys from a JWKS endpoint ------------------------------------------------------------


def test_jwks_token_with_a_published_kid_is_accepted(jwks_server: JwksServer, jwks_app: Flask) -> None:
    jwks_server.publish(("key-a", RSA_KEY))
    user_id = uuid.uuid4()

    response = jwks_app.test_client().get("/api/balance", headers=bearer(rs256(user_id, "key-a")))

    assert_reads_balance_of(response, user_id)


def test_jwks_is_fetched_once_for_repeated_requests(jwks_server: JwksServer, jwks_app: Flask) -> None:
    jwks_server.publish(("key-a", RSA_KEY))
    client = jwks_app.test_client()
    user_id = uuid.uuid4()
    assert client.get("/api/balance", headers=bearer(rs256(user_id, "key-a"))).status_code == 200

    response = client.get("/api/balance", headers=bearer(rs256(user_id, "key-a")))

    assert_reads_balance_of(response, user_id)
    assert jwks_server.fetches == 1


def test_jwks_rotated_key_is_accepted_without_a_restart(jwks_server: JwksServer, jwks_app: Flask) -> None:
    jwks_server.publish(("key-a", RSA_KEY))
    client = jwks_app.test_client()
    user_id = uuid.uuid4()
    assert client.get("/api/balance", headers=bearer(rs256(user_id, "key-a"))).status_code == 200
    jwks_server.publish(("key-a", RSA_KEY), ("key-b", RSA_KEY_B))

    response = client.get("/api/balance", headers=bearer(rs256(user_id, "key-b", RSA_KEY_B)))

    assert_reads_balance_of(response, user_id)
    assert jwks_server.fetches == 2


@pytest.mark.parametrize(
    ("kid", "signer"),
    [
        pytest.param("key-never-published", RSA_KEY_B, id="unpublished-kid"),
        pytest.param(None, RSA_KEY, id="no-kid"),
        pytest.param("key-a", RSA_KEY_B, id="published-kid-signed-with-another-key"),
    ],
)
def test_jwks_token_not_verifiable_by_a_published_key_is_401(
    jwks_server: JwksServer, jwks_app: Flask, kid: str | None, signer: Any
) -> None:
    jwks_server.publish(("key-a", RSA_KEY))

    response = jwks_app.test_client().get("/api/balance", headers=bearer(rs256(uuid.uuid4(), kid, signer)))

    assert_unauthorized(response)


def test_unreachable_jwks_is_503(build_app: Callable[..., Flask]) -> None:
    application = build_app(
        JWT_SECRET_KEY=None,
        JWT_JWKS_URL=f"http://127.0.0.1:{closed_port()}/.well-known/jwks.json",
        JWT_ALGORITHM="RS256",
        JWT_JWKS_REFRESH_COOLDOWN_SECONDS=0,
    )

    response = application.test_client().get("/api/balance", headers=bearer(rs256(uuid.uuid4(), "key-a")))

    assert_problem(response, 503, "identity_provider_unavailable")
    assert response.headers.get("Retry-After")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>Bad gateway</body></html>", id="html-page"),
        pytest.param(b'["not", "a", "key", "set"]', id="json-array"),
    ],
)
def test_jwks_endpoint_serving_no_key_set_is_503(jwks_server: JwksServer, jwks_app: Flask, body: bytes) -> None:
    jwks_server.raw_body = body

    response = jwks_app.test_client().get("/api/balance", headers=bearer(rs256(uuid.uuid4(), "key-a")))

    assert_problem(response, 503, "identity_provider_unavailable")


# --- 6. the user id in another claim (JWT_IDENTITY_CLAIM) -------------------------------------


def clerk_token(user_id: uuid.UUID) -> str:
    """Like Clerk's: ``sub`` is the provider's own id, the ledger's user id is in another claim."""
    return sign(claims("user_2abc", user_uuid=str(user_id)))


def test_identity_claim_names_the_user_whose_balance_is_read(api: Any, build_app: Callable[..., Flask]) -> None:
    user_id = api.funded_user(credits=700)
    application = build_app(USER_IDENTITY_CLAIM="user_uuid")

    response = application.test_client().get("/api/balance", headers=bearer(clerk_token(user_id)))

    assert_reads_balance_of(response, user_id)
    assert response.json["balance"] == 700


def test_identity_claim_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, build_app: Callable[..., Flask]
) -> None:
    monkeypatch.setenv("JWT_IDENTITY_CLAIM", "user_uuid")
    application = build_app()
    user_id = uuid.uuid4()

    response = application.test_client().get("/api/balance", headers=bearer(clerk_token(user_id)))

    assert_reads_balance_of(response, user_id)


@pytest.mark.parametrize(
    ("subject", "extra"),
    [
        pytest.param("user_2abc", {}, id="without-the-claim"),
        pytest.param(str(uuid.uuid4()), {}, id="uuid-in-sub-only"),
        pytest.param("user_2abc", {"user_uuid": "user_2abc"}, id="claim-not-a-uuid"),
        pytest.param("user_2abc", {"user_uuid": 12345}, id="claim-a-number"),
    ],
)
def test_identity_claim_without_a_user_id_is_401(
    build_app: Callable[..., Flask], subject: str, extra: dict[str, Any]
) -> None:
    application = build_app(USER_IDENTITY_CLAIM="user_uuid")

    response = application.test_client().get("/api/balance", headers=bearer(sign(claims(subject, **extra))))

    assert_unauthorized(response)


def test_service_key_works_beside_an_identity_claim(build_app: Callable[..., Flask]) -> None:
    application = build_app(USER_IDENTITY_CLAIM="user_uuid")
    user_id = uuid.uuid4()
    key = create_key(application, READ_TRANSACTIONS, name="billing-service")

    response = application.test_client().get("/api/balance", query_string={"user_id": str(user_id)}, headers=bearer(key))

    assert_reads_balance_of(response, user_id)


# --- 7. scopes: what each kind of caller may do (BFLA) ---------------------------------------


def purchase_body(user_id: uuid.UUID, status: str = "completed") -> dict[str, Any]:
    return {
        "user_id": str(user_id),
        "type": "purchase",
        "amount": "9.99",
        "credits": 500,
        "description": "500 credits",
        "status": status,
    }


def usage_body(user_id: uuid.UUID, status: str = "completed") -> dict[str, Any]:
    return {
        "user_id": str(user_id),
        "type": "usage",
        "amount": "0",
        "credits": -20,
        "description": "Image generation",
        "status": status,
    }


def _create_purchase(client: Any, user_id: uuid.UUID, pending_id: str, headers: dict[str, str]) -> Any:
    return client.post("/api/transactions", json=purchase_body(user_id), headers=headers)


def _create_usage(client: Any, user_id: uuid.UUID, pending_id: str, headers: dict[str, str]) -> Any:
    return client.post("/api/transactions", json=usage_body(user_id), headers=headers)


def _settle_pending_purchase(client: Any, user_id: uuid.UUID, pending_id: str, headers: dict[str, str]) -> Any:
    return client.patch(f"/api/transactions/{pending_id}", json={"status": "completed"}, headers=headers)


def _register_self(client: Any, user_id: uuid.UUID, pending_id: str, headers: dict[str, str]) -> Any:
    return client.put(f"/api/users/{user_id}", headers=headers)


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(_create_purchase, id="create-own-purchase"),
        pytest.param(_create_usage, id="create-own-usage"),
        pytest.param(_settle_pending_purchase, id="settle-own-pending-purchase"),
        pytest.param(_register_self, id="register-self"),
    ],
)
def test_user_token_cannot_write(api: Any, client: Any, user_token: Callable[..., str], write: Callable[..., Any]) -> None:
    user_id = api.funded_user()
    pending_id = api.purchase(user_id, status="pending").json["id"]

    response = write(client, user_id, pending_id, bearer(user_token(user_id)))

    assert_problem(response, 403, "insufficient_scope")


@pytest.mark.parametrize(
    ("scope", "body", "status"),
    [
        pytest.param(WRITE_USAGE, purchase_body, 403, id="usage-service-creates-purchase"),
        pytest.param(WRITE_PURCHASES, usage_body, 403, id="purchases-service-creates-usage"),
        pytest.param(WRITE_USAGE, usage_body, 201, id="usage-service-creates-usage"),
        pytest.param(WRITE_PURCHASES, purchase_body, 201, id="purchases-service-creates-purchase"),
    ],
)
def test_service_creates_only_the_transaction_types_its_scope_allows(
    api: Any, client: Any, service_token: Callable[..., str], scope: str, body: Callable[..., Any], status: int
) -> None:
    user_id = api.funded_user()

    response = client.post("/api/transactions", json=body(user_id), headers=bearer(service_token(scope)))

    assert response.status_code == status, response.json
    if status == 403:
        assert response.json["code"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("scope", "create", "status"),
    [
        pytest.param(WRITE_USAGE, "purchase", 403, id="usage-service-settles-purchase"),
        pytest.param(WRITE_PURCHASES, "usage", 403, id="purchases-service-settles-usage"),
        pytest.param(WRITE_USAGE, "usage", 200, id="usage-service-settles-usage"),
        pytest.param(WRITE_PURCHASES, "purchase", 200, id="purchases-service-settles-purchase"),
    ],
)
def test_service_settles_only_the_transaction_types_its_scope_allows(
    api: Any, service_token: Callable[..., str], scope: str, create: str, status: int
) -> None:
    user_id = api.funded_user()
    pending = getattr(api, create)(user_id, status="pending").json["id"]

    response = api.settle(pending, "completed", token=service_token(scope))

    assert response.status_code == status, response.json
    if status == 403:
        assert response.json["code"] == "insufficient_scope"


def test_generation_service_cannot_mint_credits_by_settling_a_purchase(
    api: Any, client: Any, service_token: Callable[..., str]
) -> None:
    user_id = api.register()
    pending = api.purchase(user_id, credits=1_000_000, status="pending").json["id"]

    api.settle(pending, "completed", token=service_token(WRITE_USAGE))

    assert api.balance(user_id)["balance"] == 0
    assert client.get(f"/api/transactions/{pending}", headers=bearer(api.admin_token)).json["status"] == "pending"


def _history(client: Any, user_id: uuid.UUID, tx_id: str, token: str) -> Any:
    return client.get("/api/transactions", query_string={"user_id": str(user_id)}, headers=bearer(token))


def _balance(client: Any, user_id: uuid.UUID, tx_id: str, token: str) -> Any:
    return client.get("/api/balance", query_string={"user_id": str(user_id)}, headers=bearer(token))


def _one_transaction(client: Any, user_id: uuid.UUID, tx_id: str, token: str) -> Any:
    return client.get(f"/api/transactions/{tx_id}", headers=bearer(token))


SERVICE_READS = [
    pytest.param(_history, id="history"),
    pytest.param(_balance, id="balance"),
    pytest.param(_one_transaction, id="one-transaction"),
]


@pytest.mark.parametrize("read", SERVICE_READS)
def test_service_without_transactions_read_cannot_read(
    api: Any, client: Any, service_token: Callable[..., str], read: Callable[..., Any]
) -> None:
    user_id = api.funded_user()
    tx_id = api.history(user_id).json["data"][0]["id"]
    token = service_token(*sorted(SERVICE_SCOPES - {READ_TRANSACTIONS}))

    response = read(client, user_id, tx_id, token)

    assert_problem(response, 403, "insufficient_scope")


@pytest.mark.parametrize("read", SERVICE_READS)
def test_service_with_transactions_read_reads_any_user(
    api: Any, client: Any, service_token: Callable[..., str], read: Callable[..., Any]
) -> None:
    user_id = api.funded_user()
    tx_id = api.history(user_id).json["data"][0]["id"]

    response = read(client, user_id, tx_id, service_token(READ_TRANSACTIONS))

    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    ("scopes", "status"),
    [
        pytest.param(sorted(SERVICE_SCOPES - {WRITE_USERS}), 403, id="every-scope-but-users-write"),
        pytest.param([WRITE_USERS], 201, id="users-write"),
    ],
)
def test_registering_a_user_needs_users_write(
    client: Any, service_token: Callable[..., str], scopes: list[str], status: int
) -> None:
    response = client.put(f"/api/users/{uuid.uuid4()}", headers=bearer(service_token(*scopes)))

    assert response.status_code == status, response.json
    if status == 403:
        assert response.json["code"] == "insufficient_scope"


def test_user_token_with_identity_provider_scopes_is_still_a_user_token(client: Any) -> None:
    user_id = uuid.uuid4()
    token = sign(claims(str(user_id), scope="openid profile email"))

    response = client.get("/api/balance", headers=bearer(token))

    assert_reads_balance_of(response, user_id)


def test_user_token_with_identity_provider_scopes_cannot_name_another_user(client: Any) -> None:
    token = sign(claims(str(uuid.uuid4()), scope="openid profile email"))

    response = client.get("/api/balance", query_string={"user_id": str(uuid.uuid4())}, headers=bearer(token))

    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("scope", ["admin", "openid admin transactions:write", "TRANSACTIONS:READ"])
def test_token_with_only_unknown_scopes_is_not_a_service(client: Any, scope: str) -> None:
    token = sign(claims("billing-service", scope=scope))

    response = client.get("/api/balance", query_string={"user_id": str(uuid.uuid4())}, headers=bearer(token))

    assert_unauthorized(response)


def test_scope_claim_that_is_not_a_string_grants_nothing(client: Any) -> None:
    token = sign(claims("billing-service", scope=[READ_TRANSACTIONS]))

    response = client.get("/api/balance", query_string={"user_id": str(uuid.uuid4())}, headers=bearer(token))

    assert_unauthorized(response)


# --- 8. object-level access (BOLA) -----------------------------------------------------------


def test_user_cannot_read_another_users_transaction_by_id(
    api: Any, client: Any, user_token: Callable[..., str]
) -> None:
    owner, intruder = api.funded_user(), api.funded_user()
    tx_id = api.history(owner).json["data"][0]["id"]

    response = client.get(f"/api/transactions/{tx_id}", headers=bearer(user_token(intruder)))

    assert_problem(response, 404, "not_found")


def test_user_reads_own_transaction_by_id(api: Any, client: Any, user_token: Callable[..., str]) -> None:
    owner = api.funded_user()
    tx_id = api.history(owner).json["data"][0]["id"]

    response = client.get(f"/api/transactions/{tx_id}", headers=bearer(user_token(owner)))

    assert response.status_code == 200, response.json
    assert response.json["id"] == tx_id


USER_READS = [pytest.param("/api/transactions", id="history"), pytest.param("/api/balance", id="balance")]


@pytest.mark.parametrize("path", USER_READS)
def test_user_cannot_name_another_user(api: Any, client: Any, user_token: Callable[..., str], path: str) -> None:
    owner, intruder = api.funded_user(), api.funded_user()

    response = client.get(path, query_string={"user_id": str(owner)}, headers=bearer(user_token(intruder)))

    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("path", USER_READS)
def test_user_may_name_themself(api: Any, client: Any, user_token: Callable[..., str], path: str) -> None:
    owner = api.funded_user()

    response = client.get(path, query_string={"user_id": str(owner)}, headers=bearer(user_token(owner)))

    assert response.status_code == 200, response.json


def test_user_history_holds_only_their_own_transactions(
    api: Any, client: Any, user_token: Callable[..., str]
) -> None:
    owner, other = api.funded_user(), api.funded_user()
    api.usage(other)

    response = client.get("/api/transactions", headers=bearer(user_token(owner)))

    assert response.status_code == 200, response.json
    assert {row["user_id"] for row in response.json["data"]} == {str(owner)}


@pytest.mark.parametrize("path", USER_READS)
def test_service_must_name_the_user_it_reads(client: Any, service_token: Callable[..., str], path: str) -> None:
    response = client.get(path, headers=bearer(service_token(READ_TRANSACTIONS)))

    assert_problem(response, 422, "validation_error")
    assert "user_id" in response.json["errors"]


# --- 9. startup refuses configurations without a sound key -----------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"DATABASE_URL": UNUSED_DATABASE_URL}, "No token verification key", id="no-key"),
        pytest.param(
            {"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_SECRET_KEY": TEST_SECRET, "JWT_PUBLIC_KEY": public_pem(RSA_KEY)},
            "exactly one",
            id="secret-and-public-key",
        ),
        pytest.param(
            {"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_PUBLIC_KEY": public_pem(RSA_KEY), "JWT_JWKS_URL": "https://idp.example/jwks"},
            "exactly one",
            id="public-key-and-jwks",
        ),
        pytest.param({"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_SECRET_KEY": "short-secret"}, "at least 32", id="short-secret"),
        pytest.param({"JWT_SECRET_KEY": TEST_SECRET}, "DATABASE_URL", id="no-database-url"),
        pytest.param(
            {"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_SECRET_KEY": TEST_SECRET, "JWT_ALGORITHM": "RS256"},
            "RS256",
            id="rs256-with-a-secret",
        ),
        pytest.param(
            {"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_PUBLIC_KEY": public_pem(RSA_KEY), "JWT_ALGORITHM": "HS256"},
            "HS256",
            id="hs256-with-a-public-key",
        ),
        pytest.param(
            {"DATABASE_URL": UNUSED_DATABASE_URL, "JWT_SECRET_KEY": TEST_SECRET, "JWT_ALGORITHM": "none"},
            "not supported",
            id="alg-none",
        ),
    ],
)
def test_startup_refuses_unsound_key_configuration(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(config)


@pytest.mark.parametrize(
    ("environment", "config", "message"),
    [
        pytest.param({"JWT_SECRET_KEY": "short-secret"}, {}, "at least 32", id="short-secret-in-env"),
        pytest.param(
            {"JWT_SECRET_KEY": TEST_SECRET}, {"JWT_JWKS_URL": "https://idp.example/jwks"}, "exactly one", id="env-secret-and-jwks"
        ),
        pytest.param({"JWT_ALGORITHM": "RS256", "JWT_SECRET_KEY": TEST_SECRET}, {}, "RS256", id="env-rs256-with-a-secret"),
    ],
)
def test_startup_refuses_unsound_key_configuration_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], config: dict[str, Any], message: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=message):
        create_app({"DATABASE_URL": UNUSED_DATABASE_URL, **config})


# --- the verified-token cache ------------------------------------------------------------------


def test_a_token_verified_before_is_still_refused_once_it_expires(client):
    subject = str(uuid.uuid4())
    expires = int(time.time()) + 2
    # A fractional exp: verification counts it from its whole second, and the cache must too.
    token = sign({"sub": subject, "iat": int(time.time()), "exp": expires + 0.9})
    assert client.get("/api/balance", headers=bearer(token)).status_code == 200
    assert client.get("/api/balance", headers=bearer(token)).status_code == 200  # now answered from the cache
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    response = client.get("/api/balance", headers=bearer(token))
    assert response.status_code == 401
    assert response.json["code"] == "invalid_token"


def test_a_token_verified_by_one_configuration_is_not_trusted_by_another(database_url):
    token = sign(claims(str(uuid.uuid4())))
    trusting = make_app(database_url)
    assert trusting.test_client().get("/api/balance", headers=bearer(token)).status_code == 200
    other = make_app(database_url, JWT_SECRET_KEY=secrets.token_hex(32))
    assert other.test_client().get("/api/balance", headers=bearer(token)).status_code == 401


def test_verified_tokens_are_forgotten_oldest_first_and_after_their_time():
    cache = VerifiedTokens(size=2, ttl=300)
    callers = {name: Caller(name=name) for name in "abc"}
    far = time.time() + 600
    for name in "abc":
        cache.put(name, callers[name], far)
    assert cache.get("a") is None
    assert cache.get("b") is callers["b"] and cache.get("c") is callers["c"]

    cache.put("past", callers["a"], time.time() - 1)
    assert cache.get("past") is None
    short = VerifiedTokens(size=10, ttl=0)
    short.put("a", callers["a"], far)
    assert short.get("a") is None
    disabled = VerifiedTokens(size=0, ttl=300)
    disabled.put("a", callers["a"], far)
    assert disabled.get("a") is None
