"""The one error envelope: RFC 9457 ``application/problem+json``.

Code anywhere raises :class:`ApiError`; every other failure (HTTP errors from
Werkzeug, validation errors, token errors, database outages, bugs) is turned
into the same shape here. Nothing from a driver or a traceback reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, has_request_context, json, request
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

PROBLEM_MIMETYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://transactions.example/problems/"

log = logging.getLogger(__name__)
REQUEST_ID_KEY = "transactions_service.request_id"


def request_id() -> str | None:
    """The id of the request being served (see observability), if any."""
    return request.environ.get(REQUEST_ID_KEY) if has_request_context() else None

# Codes for the HTTP errors Werkzeug raises on its own.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


def http_code(status: int) -> str:
    """The problem code of an HTTP status the framework or the server raises on its own."""
    return _HTTP_CODES.get(status, "http_error")


class ApiError(Exception):
    """An error with a status, a stable snake_case code and a human detail."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.errors = errors
        self.headers = headers or {}
        # Members of the problem beyond the standard ones (RFC 9457 section 3.2), e.g. how much remains.
        self.extensions = extensions or {}


def problem_response(error: ApiError) -> Response:
    response = Response(json.dumps(problem_body(error), separators=(",", ":")), status=error.status,
                        mimetype=PROBLEM_MIMETYPE)
    response.headers.update(error.headers)
    return response


def problem_body(error: ApiError) -> dict[str, Any]:
    """The problem as RFC 9457 members: a response's body, or one item's answer in a batch."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code.replace("_", "-"),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
    }
    identifier = request_id()
    if identifier is not None:
        body["instance"] = f"urn:request:{identifier}"
    if error.errors is not None:
        body["errors"] = error.errors
    body.update(error.extensions)
    return body


def validation_error(errors: dict[str, Any], detail: str = "The request is not valid.") -> ApiError:
    return ApiError(422, "validation_error", detail, title="Validation failed", errors=errors)


def _from_http_exception(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    headers = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    detail = {
        404: "No such resource.",
        405: "This method is not allowed on this resource.",
        413: "The request body is larger than the service accepts (1 MiB).",
    }.get(status, exc.description or exc.name)
    return ApiError(status, http_code(status), detail, title=exc.name, headers=headers)


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        "The ledger database is not reachable. Retry the request; writes with an Idempotency-Key are safe to retry.",
        title="Database unavailable",
        headers={"Retry-After": "1"},
    )


_LOCK_NOT_AVAILABLE = "55P03"


def is_lock_timeout(error: DBAPIError) -> bool:
    """Whether the database gave up waiting for a row lock (``lock_timeout``), by SQLSTATE."""
    return getattr(error.orig, "pgcode", None) == _LOCK_NOT_AVAILABLE


def balance_busy() -> ApiError:
    """A write that waited longer than the lock timeout for rows other writes held: the user's balance, mostly."""
    return ApiError(
        503,
        "balance_busy",
        "Other writes to this user's balance held it for longer than the lock timeout; nothing was written. "
        "Retry shortly (with the same Idempotency-Key, if any).",
        title="Balance busy",
        headers={"Retry-After": "1"},
    )


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(error: ApiError) -> Response:
        return problem_response(error)

    @app.errorhandler(ValidationError)
    def handle_validation_error(error: ValidationError) -> Response:
        messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        return problem_response(validation_error(messages))

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException) -> Response:
        return problem_response(_from_http_exception(error))

    @app.errorhandler(OperationalError)
    def handle_database_down(error: OperationalError) -> Response:
        if is_lock_timeout(error):
            log.warning("lock timeout: a write waited too long for rows other writes held")
            return problem_response(balance_busy())
        log.warning("database unavailable: %s", type(error.orig).__name__)
        return problem_response(database_unavailable())

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return problem_response(database_unavailable())
        log.exception("unhandled error")
        return problem_response(
            ApiError(500, "internal_error", "The service failed to handle this request.", title="Internal Server Error")
        )
