"""Rate limits per caller identity and per client address (Flask-Limiter).

Two limits count every request under ``/api`` (health, readiness, the spec and
metrics are never limited), each across all routes together:

- per identity: a user (or a client with no valid token) gets
  ``RATELIMIT_DEFAULT``; a service, which acts for every user at once, gets
  ``RATELIMIT_SERVICE_DEFAULT``;
- per client address: ``RATELIMIT_PER_ADDRESS``, whoever the token says the
  caller is, so that minting tokens for fresh user ids buys no more requests.
  Services, known by an API key the operator issued, are counted by key only.

The client address is the peer's unless ``TRUSTED_PROXIES`` says how many
proxies in front of the service set ``X-Forwarded-For`` (``http.init_http``).
Windows slide (``RATELIMIT_STRATEGY``). With the default ``memory://`` storage
each gunicorn worker counts on its own (the effective limit is multiplied by
the worker count and resets on restart); ``RATELIMIT_STORAGE_URI=redis://...``
shares the counts between workers and instances, and while it is unreachable
each worker counts in memory instead.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_limiter import Limit, Limiter
from flask_limiter.errors import RateLimitExceeded

from .auth import current_caller
from .errors import ApiError, problem_response
from .http import MAX_BATCH_ITEMS, json_body

log = logging.getLogger(__name__)


def caller_key() -> str:
    """Who is counted: the verified caller, or the client address when the token is missing or bad.

    Worked out once per request: the limits ask for it several times.
    """
    key = g.get("rate_limit_caller_key")
    if key is None:
        try:
            caller = current_caller()
        except Exception:  # the view will answer 401/503 itself; count the attempt by address
            key = address_key()
        else:
            key = f"{'service' if caller.is_service else 'user'}:{caller.name}"
        g.rate_limit_caller_key = key
    return key


def address_key() -> str:
    return f"address:{request.remote_addr}"


def _limit_for_caller() -> str:
    key = caller_key()
    setting = "RATELIMIT_SERVICE_DEFAULT" if key.startswith("service:") else "RATELIMIT_DEFAULT"
    return current_app.config[setting]


# The writes a batch makes count as that many requests: a limit counts writes, not calls.
BATCH_ENDPOINT = "transactions.create_transaction_batch"


def _cost() -> int:
    if request.endpoint != BATCH_ENDPOINT:
        return 1
    try:
        body = json_body()
    except ApiError:
        return 1  # refused as it is, before any item is read
    items = body.get("items") if isinstance(body, dict) else None
    return min(max(len(items), 1), MAX_BATCH_ITEMS) if isinstance(items, list) else 1


def _is_service() -> bool:
    return caller_key().startswith("service:")


def init_limits(app: Flask, unlimited: list[Blueprint]) -> Limiter:
    # Flask-Limiter's own headers would put its window's reset time in Retry-After on every
    # response, over the service's own (503 database_unavailable, 409 idempotency_key_in_use);
    # so the service writes the X-RateLimit-* headers itself and Retry-After only where it means it.
    send_headers = app.config["RATELIMIT_HEADERS_ENABLED"]
    app.config["RATELIMIT_HEADERS_ENABLED"] = False
    # A shared store that fails (Redis down) costs the sharing, not the ledger: each worker
    # counts in memory until the store answers again, then goes back to it.
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    limiter = Limiter(
        key_func=caller_key,
        strategy=app.config["RATELIMIT_STRATEGY"],
        default_limits=[
            Limit(_limit_for_caller, key_function=caller_key, scope="identity", shared=True, cost=_cost),
            Limit(
                lambda: current_app.config["RATELIMIT_PER_ADDRESS"],
                key_function=address_key,
                scope="address",
                shared=True,
                exempt_when=_is_service,
            ),
        ],
    )
    limiter.init_app(app)
    for blueprint in unlimited:
        limiter.exempt(blueprint)
    if send_headers:
        app.after_request(lambda response: _add_limit_headers(limiter, response))
    app.register_error_handler(RateLimitExceeded, lambda error: _too_many_requests(limiter, error))
    return limiter


def _add_limit_headers(limiter: Limiter, response: Response) -> Response:
    # The answer is decided (a write may have committed): a storage failure here
    # costs the headers, never the response.
    try:
        current = limiter.current_limit
        if current is not None:
            response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
            response.headers["X-RateLimit-Remaining"] = str(current.remaining)
            response.headers["X-RateLimit-Reset"] = str(current.reset_at)
    except Exception:
        log.warning("rate-limit headers left out: the limit storage failed", exc_info=True)
    return response


def _too_many_requests(limiter: Limiter, error: RateLimitExceeded) -> Response:
    current = limiter.current_limit
    retry_after = max(1, math.ceil(current.reset_at - time.time())) if current else 1
    return problem_response(
        ApiError(
            429,
            "rate_limited",
            f"Too many requests (limit: {error.description}); retry after {retry_after} s.",
            title="Too Many Requests",
            headers={"Retry-After": str(retry_after)},
        )
    )
