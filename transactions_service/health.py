"""Liveness, readiness and the published contract."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from .errors import ApiError, database_unavailable
from .extensions import db

bp = Blueprint("health", __name__)

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means "not ready"
        db.session.rollback()
        raise database_unavailable() from exc
    finally:
        db.session.rollback()
    return jsonify(status="ok", database="ok")


@bp.get("/openapi.yaml")
def openapi_spec() -> Response:
    path = Path(current_app.config.get("OPENAPI_PATH", OPENAPI_PATH))
    if not path.is_file():
        raise ApiError(404, "not_found", "The OpenAPI document is not shipped with this build.", title="Not Found")
    return Response(path.read_bytes(), mimetype="application/yaml")
