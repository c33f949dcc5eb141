"""Request parsing shared by the views, and the headers every response gets."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Flask, Request, Response, g, request
from marshmallow import Schema
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

from . import strict_json
from .auth import invalid_token
from .errors import ApiError, validation_error

# The bounds a client can reach, each answered here as a problem. gunicorn's own
# limits (gunicorn.conf.py) sit above them, so that it refuses only what is far out.
MAX_PATH_BYTES = 2048
MAX_QUERY_STRING_BYTES = 2048
MAX_QUERY_PARAMETERS = 12
MAX_AUTHORIZATION_BYTES = 8192
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 50
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_BATCH_ITEMS = 100
# Printable ASCII, no comma (two Idempotency-Key headers arrive joined by one), no space at either end.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]([\x20-\x2b\x2d-\x7e]*[\x21-\x2b\x2d-\x7e])?$")
EXPOSED_HEADERS = "Location, Idempotent-Replayed, Retry-After, WWW-Authenticate, Content-Disposition"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The two headers WSGI passes without the HTTP_ prefix.
_UNPREFIXED_HEADERS = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


def json_body() -> Any:
    """The request body, which must be sent as JSON (415 otherwise), parsed as strict JSON (``strict_json``)."""
    if not request.is_json:
        sent = request.mimetype or "no Content-Type"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"The body must be JSON sent with 'Content-Type: application/json', not {sent} "
            "(curl's -d sends a form unless told otherwise: add -H 'Content-Type: application/json').",
            title="Unsupported Media Type",
        )
    if "json_body" in g:
        return g.json_body  # read already: the rate limit counts a batch's items before the view runs
    try:
        g.json_body = strict_json.loads(request.get_data(cache=True))
        return g.json_body
    except strict_json.NotStrictJson as exc:
        raise ApiError(
            400, "malformed_json", f"The request body is not valid JSON: {exc}.", title="Malformed JSON"
        ) from exc


class AnySegmentConverter(BaseConverter):
    """Path ids (``<uuid:...>`` in the routes): any segment reaches the view, which decides what one
    that is not a UUID means (:func:`path_uuid`); Werkzeug's own converter would always make it a 404.
    But for the words that name a collection's own routes (``/api/transactions/export``, ``…/batch``), which
    would otherwise also match the id's route and be offered its methods."""

    regex = r"(?!(?:export|batch)$)[^/]+"


def path_uuid(name: str, value: str, *, missing: bool = False) -> uuid.UUID:
    """A path parameter that must be a UUID (8-4-4-4-12): else 422 naming it, or, with ``missing``,
    the 404 of an id that names nothing (a transaction id: no shape of it is told from an unknown one)."""
    if not _UUID.fullmatch(value):
        if missing:
            raise ApiError(404, "not_found", "No such resource.", title="Not Found")
        raise validation_error({name: ["Must be a UUID such as 3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10."]},
                               f"The path parameter {name} is not a UUID.")
    return uuid.UUID(value)


def load_body(schema: Schema) -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise validation_error({"_schema": ["The body must be a JSON object."]})
    return schema.load(body)


_QUERY_CACHE_SIZE = 1024
_parsed_queries: dict[tuple[Schema, bytes], dict[str, Any]] = {}


def load_query(schema: Schema, repeated: tuple[str, ...] = ()) -> dict[str, Any]:
    """The query string, validated by ``schema``; the parameters named in ``repeated`` as lists of every value.

    Parsing depends on nothing but the query string, and the same few come
    again and again (the billing page asks every user's history with
    ``?limit=20``), so each worker remembers up to ``_QUERY_CACHE_SIZE``
    it parsed (starting afresh when full). A query that fails validation is not remembered.
    """
    key = (schema, request.query_string)
    parsed = _parsed_queries.get(key)
    if parsed is None:
        args: dict[str, Any] = request.args.to_dict(flat=True)
        args.update({name: request.args.getlist(name) for name in repeated if name in request.args})
        parsed = schema.load(args)
        if len(_parsed_queries) >= _QUERY_CACHE_SIZE:
            _parsed_queries.clear()
        _parsed_queries[key] = parsed
    return dict(parsed)


IDEMPOTENCY_KEY_RULE = (
    f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters other than a comma, not starting or ending"
    " with a space."
)


def is_idempotency_key(key: str) -> bool:
    """Whether ``key`` may be an idempotency key: in the header of a write, or on an item of a batch."""
    return len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and _IDEMPOTENCY_KEY.match(key) is not None


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not is_idempotency_key(key):
        raise validation_error(
            {"Idempotency-Key": [f"Must be sent once, as {IDEMPOTENCY_KEY_RULE}"]},
            "The Idempotency-Key header is not valid.",
        )
    return key


def _headers_too_large(detail: str) -> ApiError:
    return ApiError(431, "request_header_fields_too_large", detail, title="Request Header Fields Too Large")


def enforce_header_bounds() -> None:
    """Refuse too many or too long headers, whatever the path.

    Read from the WSGI environ directly: this runs on every request, and
    Werkzeug's header view costs several times more to walk.
    """
    environ = request.environ
    count = 0
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in _UNPREFIXED_HEADERS:
            count += 1
            if len(value) > MAX_HEADER_BYTES and key != "HTTP_AUTHORIZATION":
                name = key.removeprefix("HTTP_").replace("_", "-").title()
                raise _headers_too_large(f"The {name} header is longer than {MAX_HEADER_BYTES} bytes.")
    if count > MAX_HEADERS:
        raise _headers_too_large(f"The request has more than {MAX_HEADERS} header fields.")


def enforce_request_bounds() -> None:
    """Refuse oversized inputs before any of them is parsed or verified (bodies: MAX_CONTENT_LENGTH)."""
    enforce_header_bounds()
    if not request.path.startswith("/api/"):
        return
    if len(request.path) > MAX_PATH_BYTES:
        raise ApiError(414, "uri_too_long", f"The path is longer than {MAX_PATH_BYTES} bytes.", title="URI Too Long")
    if len(request.query_string) > MAX_QUERY_STRING_BYTES:
        raise ApiError(
            414, "uri_too_long", f"The query string is longer than {MAX_QUERY_STRING_BYTES} bytes.", title="URI Too Long"
        )
    if request.query_string.count(b"&") + 1 > MAX_QUERY_PARAMETERS:
        raise validation_error({"_query": [f"At most {MAX_QUERY_PARAMETERS} query parameters are accepted."]})
    if len(request.headers.get("Authorization", "")) > MAX_AUTHORIZATION_BYTES:
        raise invalid_token(f"The Authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes.")


def init_http(app: Flask) -> None:
    """Before the blueprints are registered: their routes use the ``uuid`` converter set here."""
    app.url_map.converters["uuid"] = AnySegmentConverter
    origins = frozenset(app.config.get("CORS_ORIGINS", ()))
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        # The client's address (rate limits, logs) from X-Forwarded-For, as set by that many proxies.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.before_request(enforce_request_bounds)

    @app.after_request
    def add_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.headers.get("Authorization"):
            response.headers["Cache-Control"] = "no-store"
        origin = request.headers.get("Origin")
        if origin is not None and origins:
            response.vary.add("Origin")
            if origin in origins:
                _allow_origin(request, response, origin)
        return response


def _allow_origin(req: Request, response: Response, origin: str) -> None:
    """CORS for the billing page: bearer tokens, no cookies, so no credentials."""
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if req.method == "OPTIONS" and req.headers.get("Access-Control-Request-Method"):
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Idempotency-Key"
        response.headers["Access-Control-Max-Age"] = "600"
