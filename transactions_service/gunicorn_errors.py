"""The answers gunicorn gives by itself, in the service's own problem+json.

gunicorn refuses a few requests before the app sees them: a request line
longer than 8,190 bytes, a header field or a header count beyond its limits
(set above the app's own in gunicorn.conf.py, so that the app answers every
bound a well-formed request can reach), and requests that are not well-formed
HTTP (a control character in a header, a bad request line, a chunked body that
does not parse). Its own answer is an HTML page; this one is the problem every
other error is, with a request id in ``X-Request-ID`` and ``instance``, and
the same access log line the app writes.
"""

from __future__ import annotations

import json
import logging
import uuid

from gunicorn import util

from .errors import PROBLEM_MIMETYPE, PROBLEM_TYPE_BASE, http_code

access_log = logging.getLogger("transactions_service.access")

_DETAILS = {
    400: "The request is not well-formed HTTP (for example, a header holds a control character); "
    "it was refused before the service read it.",
    414: "The request line is longer than 8190 bytes.",
    431: "The request has more than 100 header fields, or a header field longer than 16380 bytes.",
}


def write_problem(sock, status_int: int, reason: str, mesg: str) -> None:  # noqa: ARG001 - gunicorn's signature
    """Stands in for ``gunicorn.util.write_error``: the same response, as ``application/problem+json``."""
    identifier = uuid.uuid4().hex
    code = http_code(status_int)
    body = json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + code.replace("_", "-"),
            "title": reason,
            "status": status_int,
            "detail": _DETAILS.get(status_int, reason),
            "code": code,
            "instance": f"urn:request:{identifier}",
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MIMETYPE}\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {identifier}\r\nX-Content-Type-Options: nosniff\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
    access_log.info(
        "refused by gunicorn: %s %s", status_int, reason,
        extra={"route": "unparsed", "status": status_int, "request_id": identifier},
    )


def install() -> None:
    """Make gunicorn's workers answer with :func:`write_problem` (called from gunicorn.conf.py)."""
    util.write_error = write_problem
