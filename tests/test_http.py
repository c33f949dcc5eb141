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
    assert "Content-Disposition" in response.headers["Access-Control-Expose-Headers"]  # an export's file name


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


def _pooled_backends(app):
    """The server processes behind the connections this app's pools hold (one each, in a single thread)."""
    from sqlalchemy import text as sql

    from transactions_service.extensions import db, run_statement

    with app.app_context():
        statement_pid = run_statement("SELECT pg_backend_pid()", {})[0][0]
        session_pid = db.session.execute(sql("SELECT pg_backend_pid()")).scalar()
        db.session.remove()
    return [statement_pid, session_pid]


def _as_after_a_database_restart(app, engine):
    """End the server side of every pooled connection, as a restart does, leaving the pools unaware."""
    from sqlalchemy import text as sql

    with engine.connect() as other:
        for pid in _pooled_backends(app):
            other.execute(sql("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other.commit()


@pytest.mark.direct_only(reason="ends server backends by pid, and PgBouncer shares them between clients")
def test_reads_after_a_database_restart_are_answered_on_fresh_connections(database_url, engine, api, user_token):
    app = make_app(database_url)
    client = app.test_client()
    headers = bearer(user_token(api.funded_user(100)))
    _as_after_a_database_restart(app, engine)
    assert client.get("/api/transactions", headers=headers).status_code == 200
    _as_after_a_database_restart(app, engine)
    assert client.get("/api/balance", headers=headers).status_code == 200


@pytest.mark.direct_only(reason="ends server backends by pid, and PgBouncer shares them between clients")
def test_a_keyed_spend_after_a_database_restart_is_recorded_once(database_url, engine, api, db_session):
    app = make_app(database_url)
    user_id = api.funded_user(100)
    spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "Image"}
    _as_after_a_database_restart(app, engine)
    keyed = {**bearer(api.admin_token), "Idempotency-Key": "gen_after_restart"}
    assert app.test_client().post("/api/transactions", json=spend, headers=keyed).status_code == 201
    assert api.balance(user_id)["balance"] == 90


@pytest.mark.direct_only(reason="ends server backends by pid, and PgBouncer shares them between clients")
def test_an_unkeyed_spend_on_a_dead_connection_is_503_and_writes_nothing(database_url, engine, api):
    # Without a key a repeat could charge twice, so the service does not repeat it: the caller decides.
    app = make_app(database_url)
    user_id = api.funded_user(100)
    spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "Image"}
    # The API key is verified (and cached) first, so that the spend itself is what meets the dead connection.
    assert app.test_client().get(f"/api/balance?user_id={user_id}", headers=bearer(api.admin_token)).status_code == 200
    _as_after_a_database_restart(app, engine)
    response = app.test_client().post("/api/transactions", json=spend, headers=bearer(api.admin_token))
    assert response.status_code == 503
    assert response.json["code"] == "database_unavailable"
    assert api.balance(user_id)["balance"] == 100
