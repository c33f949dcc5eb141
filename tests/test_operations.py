"""Request ids, structured logs, metrics and rate limits."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from transactions_service.scopes import SERVICE_SCOPES

from .conftest import create_key, make_app
from .helpers import bearer

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex


@pytest.mark.parametrize("supplied", ["req-123.abc_~", "a" * 128])
def test_a_sane_request_id_is_kept(client, supplied):
    response = client.get("/healthz", headers={"X-Request-ID": supplied})
    assert response.headers["X-Request-ID"] == supplied


@pytest.mark.parametrize("supplied", [None, "", "has space", "a" * 129, "quote\"d", "ünï"])
def test_a_missing_or_odd_request_id_is_replaced(client, supplied):
    headers = {} if supplied is None else {"X-Request-ID": supplied}
    response = client.get("/healthz", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert generated != supplied and len(generated) == 32
    assert client.get("/healthz", headers=headers).headers["X-Request-ID"] != generated


def test_problem_carries_the_request_id_as_instance(client):
    response = client.get("/api/balance", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 401
    assert response.json["instance"] == "urn:request:trace-42"


def test_one_json_access_line_per_request_without_tokens(api, client, user_token, capsys):
    user_id = api.register()
    token = user_token(user_id)
    capsys.readouterr()
    client.get("/api/balance", headers={**bearer(token), "X-Request-ID": "log-check"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "transactions_service.access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["method"] == "GET" and entry["route"] == "/api/balance" and entry["status"] == 200
    assert entry["caller"] == str(user_id) and entry["request_id"] == "log-check"
    assert isinstance(entry["duration_ms"], float)
    assert token not in json.dumps(lines)


def test_readable_logs_for_development(database_url, capsys):
    logger = logging.getLogger("transactions_service")
    handlers, configured = logger.handlers[:], getattr(logger, "_configured_by_service", False)
    logger.handlers, logger._configured_by_service = [], False
    try:
        app = make_app(database_url, LOG_FORMAT="text")
        app.test_client().get("/healthz", headers={"X-Request-ID": "text-log"})
        err = capsys.readouterr().err
        assert "INFO transactions_service.access [text-log] GET /healthz 200" in err
    finally:
        logger.handlers, logger._configured_by_service = handlers, configured


def test_metrics_are_disabled_without_a_token(client):
    assert client.get("/metrics").status_code == 404


@pytest.fixture
def metrics_client(database_url):
    return make_app(database_url, METRICS_TOKEN=METRICS_TOKEN).test_client()


def test_metrics_need_the_metrics_token(metrics_client, api):
    assert metrics_client.get("/metrics").status_code == 401
    assert metrics_client.get("/metrics", headers=bearer(api.admin_token)).status_code == 401


def test_metrics_count_requests_and_ledger_events(metrics_client):
    admin = bearer(make_admin_token(metrics_client.application))
    user_id = uuid.uuid4()
    metrics_client.put(f"/api/users/{user_id}", headers=admin)
    purchase = {"user_id": str(user_id), "type": "purchase", "amount": "1", "credits": 10, "description": "p"}
    metrics_client.post("/api/transactions", json=purchase, headers={**admin, "Idempotency-Key": "m1"})
    metrics_client.post("/api/transactions", json=purchase, headers={**admin, "Idempotency-Key": "m1"})
    spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -11, "description": "u"}
    metrics_client.post("/api/transactions", json=spend, headers=admin)
    hold = {**spend, "credits": -4, "status": "pending"}
    hold_id = metrics_client.post("/api/transactions", json=hold, headers=admin).json["id"]
    metrics_client.patch(f"/api/transactions/{hold_id}", json={"status": "failed"}, headers=admin)
    response = metrics_client.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    for sample in [
        'http_requests_total{method="POST",route="/api/transactions",status="201"}',
        'http_request_duration_seconds_bucket{le="0.005",method="PUT",route="/api/users/<uuid:user_id>"}',
        'ledger_transactions_recorded_total{status="completed",type="purchase"}',
        "ledger_idempotent_replays_total",
        "ledger_insufficient_credits_total",
        'ledger_holds_total{outcome="released"}',
    ]:
        assert sample in text, sample


def make_admin_token(app):
    return create_key(app, *sorted(SERVICE_SCOPES), name="metrics-admin")


@pytest.fixture
def limited(database_url):
    return make_app(database_url, RATELIMIT_DEFAULT="3 per minute", RATELIMIT_SERVICE_DEFAULT="5 per minute").test_client()


def test_fourth_request_of_a_user_is_429_with_retry_after(limited, user_token):
    token = user_token(uuid.uuid4())
    statuses = [limited.get("/api/balance", headers=bearer(token)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = limited.get("/api/balance", headers=bearer(token))
    assert response.status_code == 429
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "rate_limited"
    # The window is a minute; its reset time is a whole second, rounded up.
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert response.headers["X-RateLimit-Limit"] == "3"


def test_only_a_429_tells_the_client_when_to_retry(limited, user_token):
    response = limited.get("/api/balance", headers=bearer(user_token(uuid.uuid4())))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "2"
    assert int(response.headers["X-RateLimit-Reset"]) > 0
    assert "Retry-After" not in response.headers


def test_limits_are_per_identity(limited, user_token):
    first, second = user_token(uuid.uuid4()), user_token(uuid.uuid4())
    for _ in range(3):
        limited.get("/api/balance", headers=bearer(first))
    assert limited.get("/api/balance", headers=bearer(first)).status_code == 429
    assert limited.get("/api/balance", headers=bearer(second)).status_code == 200


def test_services_get_their_own_larger_limit(limited, service_token):
    token = service_token("transactions:read")
    path = f"/api/balance?user_id={uuid.uuid4()}"
    assert [limited.get(path, headers=bearer(token)).status_code for _ in range(6)] == [200] * 5 + [429]


def test_health_endpoints_are_never_limited(limited):
    assert {limited.get("/healthz").status_code for _ in range(10)} == {200}
    assert {limited.get("/readyz").status_code for _ in range(10)} == {200}


def test_requests_without_a_valid_token_are_counted_by_address(limited):
    statuses = [limited.get("/api/balance", headers=bearer("garbage")).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
