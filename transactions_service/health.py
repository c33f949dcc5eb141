"""Liveness, readiness and the published contract."""

from __future__ import annotations

import hmac
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import text

from .errors import ApiError, database_unavailable
from .extensions import db
from .observability import metrics_payload
from .replica import read_replica

bp = Blueprint("health", __name__)

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


def _check_database() -> None:
    """Raise 503 unless the primary answers a query."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means "not ready"
        db.session.rollback()
        raise database_unavailable() from exc
    finally:
        db.session.rollback()


@bp.get("/readyz")
def readyz() -> Response:
    _check_database()
    replica = read_replica()
    if replica is None:
        return jsonify(status="ok", database="ok")
    # History falls back to the primary, so a replica that is down does not make the instance unready.
    return jsonify(status="ok", database="ok", replica=replica.status())


def _require_metrics_token() -> None:
    """404 while metrics are off; 401 unless the scraper presents METRICS_TOKEN as a bearer token."""
    expected = current_app.config.get("METRICS_TOKEN")
    if not expected:
        raise ApiError(404, "not_found", "Metrics are disabled: set METRICS_TOKEN, or scrape METRICS_PORT.", title="Not Found")
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235)
        supplied = ""
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ApiError(
            401,
            "invalid_token",
            "Send the metrics token as a bearer token.",
            title="Unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, for scrapers that present ``METRICS_TOKEN`` as a bearer token."""
    _require_metrics_token()
    payload, content_type = metrics_payload()
    return Response(payload, content_type=content_type)


@bp.get("/openapi.yaml")
def openapi_spec() -> Response:
    path = Path(current_app.config.get("OPENAPI_PATH", OPENAPI_PATH))
    if not path.is_file():
        raise ApiError(404, "not_found", "The OpenAPI document is not shipped with this build.", title="Not Found")
    return Response(path.read_bytes(), mimetype="application/yaml")
