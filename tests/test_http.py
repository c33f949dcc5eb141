"""Errors, headers, CORS and the health endpoints."""

from __future__ import annotations

import pytest

from .conftest import CORS_ORIGIN, make_app
from .helpers import bearer


def test_unknown_route_is_a_404_problem(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.json == {
        "type": "https://transactions.example/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "No such resource.",
        "code": "not_found",
        "instance": f"urn:request:{response.headers['X-Request-ID']}",
    }


def test_wrong_method_is_a_405_problem_with_allow(client, api):
    response = client.delete("/api/balance", headers=bearer(api.admin_token))
    assert response.status_code == 405
    assert response.json["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_unexpected_failure_is_a_500_problem_without_internals(database_url):
    app = make_app(database_url)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals: password=hunter2")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "internal_error"
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_database_down_is_503_database_unavailable(api):
    app = make_app("postgresql://postgres@127.0.0.1:1/nothing", DATABASE_POOL_TIMEOUT=1)
    client = app.test_client()
    for path in ("/readyz", "/api/balance?user_id=3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10"):
        response = client.get(path, headers=bearer(api.admin_token))
        assert response.status_code == 503
        assert response.json["code"] == "database_unavailable"
        assert response.headers["Retry-After"]
        assert "psycopg2" not in response.get_data(as_text=True)
        assert "127.0.0.1" not in response.get_data(as_text=True)


def test_health_endpoints_answer(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["database"] == "ok"


def test_the_spec_is_served(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert b"openapi: 3.1" in response.data


def test_every_response_carries_nosniff(client):
    assert client.get("/healthz").headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/missing").headers["X-Content-Type-Options"] == "nosniff"


def test_authenticated_responses_are_not_stored_by_caches(client, api):
    response = client.get(f"/api/balance?user_id={api.register()}", headers=bearer(api.admin_token))
    assert response.headers["Cache-Control"] == "no-store"


def test_cors_preflight_from_an_allowed_origin(client):
    response = client.options(
        "/api/transactions",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.headers["Vary"]


def test_cors_exposes_headers_on_actual_requests(client, api, user_token):
    response = client.get("/api/balance", headers={**bearer(user_token(api.register())), "Origin": CORS_ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert "Location" in response.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("origin", ["http://evil.example", "null", CORS_ORIGIN + ".evil.example"])
def test_cors_ignores_other_origins(client, origin):
    response = client.options(
        "/api/transactions", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_no_cors_headers_without_configured_origins(database_url):
    app = make_app(database_url, CORS_ORIGINS=[])
    response = app.test_client().options(
        "/api/transactions", headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_connection_lost_after_a_read_still_answers(database_url, engine, api, user_token):
    """A database restart between a read and the end of its transaction must not turn a 200 into a 500."""
    from sqlalchemy import text as sql

    from transactions_service.extensions import db

    app = make_app(database_url)

    @app.after_request
    def kill_own_connection(response):
        pid = db.session.execute(sql("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as other:
            other.execute(sql("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        return response

    response = app.test_client().get("/api/balance", headers=bearer(user_token(api.register())))
    assert response.status_code == 200
