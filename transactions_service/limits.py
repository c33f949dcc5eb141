"""Rate limits per caller identity (Flask-Limiter).

Users (and unauthenticated clients, by address) get ``RATELIMIT_DEFAULT``;
services, which act for every user at once, get ``RATELIMIT_SERVICE_DEFAULT``.
Health, readiness, the spec and metrics are never limited. With the default
``memory://`` storage each gunicorn worker counts on its own (the effective
limit is multiplied by the worker count and resets on restart); production
should use a shared store such as ``redis://``.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from .auth import current_caller
from .errors import ApiError, problem_response

log = logging.getLogger(__name__)


def caller_key() -> str:
    """Who is counted: the verified caller, or the client address when the token is missing or bad."""
    try:
        caller = current_caller()
    except Exception:  # the view will answer 401/503 itself; count the attempt by address
        return f"address:{request.remote_addr}"
    return f"{'service' if caller.is_service else 'user'}:{caller.name}"


def _limit_for_caller() -> str:
    key = caller_key()
    setting = "RATELIMIT_SERVICE_DEFAULT" if key.startswith("service:") else "RATELIMIT_DEFAULT"
    return current_app.config[setting]


def init_limits(app: Flask, unlimited: list[Blueprint]) -> Limiter:
    # Flask-Limiter's own headers would put its window's reset time in Retry-After on every
    # response, over the service's own (503 database_unavailable, 409 idempotency_key_in_use);
    # so the service writes the X-RateLimit-* headers itself and Retry-After only where it means it.
    send_headers = app.config["RATELIMIT_HEADERS_ENABLED"]
    app.config["RATELIMIT_HEADERS_ENABLED"] = False
    limiter = Limiter(key_func=caller_key, default_limits=[_limit_for_caller])
    limiter.init_app(app)
    for blueprint in unlimited:
        limiter.exempt(blueprint)

    @app.after_request
    def add_limit_headers(response: Response) -> Response:
        # The answer is decided (a write may have committed): a storage failure here
        # costs the headers, never the response.
        try:
            current = limiter.current_limit if send_headers else None
            if current is not None:
                response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
                response.headers["X-RateLimit-Remaining"] = str(current.remaining)
                response.headers["X-RateLimit-Reset"] = str(current.reset_at)
        except Exception:
            log.warning("rate-limit headers left out: the limit storage failed", exc_info=True)
        return response

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(error: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        retry_after = max(1, math.ceil(current.reset_at - time.time())) if current else 1
        return problem_response(
            ApiError(
                429,
                "rate_limited",
                f"Too many requests from this caller (limit: {error.description}); retry after {retry_after} s.",
                title="Too Many Requests",
                headers={"Retry-After": str(retry_after)},
            )
        )

    return limiter
