"""Request ids, structured logs and Prometheus metrics.

Every request gets an id (the caller's ``X-Request-ID`` when it is sane, else
a new one). It is returned in ``X-Request-ID``, put in every log line written
while the request runs, and in problem bodies as ``instance``. One access log
line per request records method, route, status, duration, caller and request
id; never tokens or bodies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .auth import verified_caller
from .errors import REQUEST_ID_KEY, request_id

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_STARTED_KEY = "transactions_service.started"

access_log = logging.getLogger("transactions_service.access")

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests served.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to serve a request.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEDGER_TRANSACTIONS = Counter(
    "ledger_transactions_recorded_total", "Transactions recorded, by type and initial status.", ["type", "status"]
)
LEDGER_HOLDS = Counter(
    "ledger_holds_total", "Usage holds that ended, by outcome (settled, released, expired).", ["outcome"]
)
LEDGER_LOTS_EXPIRED = Counter("ledger_lots_expired_total", "Credit lots whose unheld credits expired.")
LEDGER_REPLAYS = Counter("ledger_idempotent_replays_total", "Writes answered by replaying an idempotency record.")
LEDGER_REFUSED_SPENDS = Counter(
    "ledger_insufficient_credits_total", "Usage refused because the user had too few available credits."
)


class _RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extra fields."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


JsonFormatter.converter = time.gmtime


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, as redirections and test capture expect."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(app: Flask) -> None:
    """Send the service's logs to stderr, as JSON lines or readable text (LOG_FORMAT)."""
    logger = logging.getLogger("transactions_service")
    if getattr(logger, "_configured_by_service", False):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if app.config["LOG_FORMAT"] == "json" else TextFormatter())
    handler.addFilter(_RequestContextFilter())
    logger.addHandler(handler)
    logger.setLevel(app.config["LOG_LEVEL"])
    logger.propagate = False
    logger._configured_by_service = True  # type: ignore[attr-defined]


def init_observability(app: Flask) -> None:
    configure_logging(app)

    @app.before_request
    def start_request() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        request.environ[REQUEST_ID_KEY] = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request.environ[_STARTED_KEY] = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        identifier = request_id()
        if identifier is None:  # a request that failed before before_request ran
            return response
        response.headers["X-Request-ID"] = identifier
        duration = time.perf_counter() - request.environ.get(_STARTED_KEY, time.perf_counter())
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(duration)
        if not access_log.isEnabledFor(logging.INFO):
            return response
        caller = verified_caller()
        access_log.info(
            "%s %s %s",
            request.method,
            route,
            response.status_code,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "caller": caller.name if caller is not None else None,
                # A service's API key by its id (never the key): which of its keys is in use.
                **({"key_id": caller.key_id} if caller is not None and caller.key_id else {}),
            },
        )
        return response



def metrics_payload() -> tuple[bytes, str]:
    """The metrics of this process, or of every gunicorn worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
