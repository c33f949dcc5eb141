"""Every bound a client can reach is a problem+json with a request id, through gunicorn.

The app's bounds (http.py) sit below gunicorn's (gunicorn.conf.py), so that the
app answers them; what gunicorn still refuses by itself, beyond its limits or
not well-formed HTTP, is answered in the same shape (gunicorn_errors.py).
Requests are written to the socket byte for byte: HTTP clients refuse to send
most of them.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow


def send_raw(base_url: str, request_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> tuple[int, dict, dict]:
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        lines = [request_line, f"Host: {address.netloc}", *(f"{name}: {value}" for name, value in headers)]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, json.loads(response.read())


def assert_problem_with_request_id(answer, status: int, code: str) -> None:
    answer_status, headers, body = answer
    assert answer_status == status, body
    assert headers["content-type"] == "application/problem+json"
    assert body["status"] == status and body["code"] == code
    assert headers["x-request-id"] and body["instance"] == f"urn:request:{headers['x-request-id']}"


def balance_request(extra_headers: list[tuple[str, str]], path: str = "/api/balance") -> tuple[str, list[tuple[str, str]]]:
    return f"GET {path} HTTP/1.1", [("Connection", "close"), *extra_headers]


# --- answered by the app --------------------------------------------------------------------------


def test_an_authorization_header_over_8_kib_is_the_apps_401(live_server):
    answer = send_raw(live_server, *balance_request([("Authorization", "Bearer " + "x" * 8186)]))
    assert_problem_with_request_id(answer, 401, "invalid_token")
    assert "longer than 8192 bytes" in answer[2]["detail"]


def test_any_other_header_over_8_kib_is_the_apps_431(live_server):
    answer = send_raw(live_server, *balance_request([("X-Trace", "t" * 8193)]))
    assert_problem_with_request_id(answer, 431, "request_header_fields_too_large")
    assert "X-Trace" in answer[2]["detail"]


def test_a_header_of_exactly_8_kib_reaches_the_view(live_server):
    answer = send_raw(live_server, *balance_request([("X-Trace", "t" * 8192)]))
    assert_problem_with_request_id(answer, 401, "missing_token")


def test_more_than_50_headers_is_the_apps_431(live_server):
    # Host and Connection are two of them.
    answer = send_raw(live_server, *balance_request([(f"X-Extra-{index}", "1") for index in range(49)]))
    assert_problem_with_request_id(answer, 431, "request_header_fields_too_large")
    assert "more than 50" in answer[2]["detail"]
    assert send_raw(live_server, *balance_request([(f"X-Extra-{index}", "1") for index in range(48)]))[0] == 401


def test_a_query_string_over_2_kib_is_the_apps_414(live_server):
    answer = send_raw(live_server, *balance_request([], path="/api/transactions?type=" + "x" * 2044))
    assert_problem_with_request_id(answer, 414, "uri_too_long")


def test_a_path_over_2_kib_is_the_apps_414(live_server):
    answer = send_raw(live_server, *balance_request([], path="/api/" + "p" * 2044))
    assert_problem_with_request_id(answer, 414, "uri_too_long")


def test_two_idempotency_key_headers_are_refused_not_joined(live_server, service_token):
    key = service_token("purchases:write")
    body = json.dumps({"user_id": str(uuid.uuid4()), "type": "purchase", "amount": "1", "credits": 1, "description": "x"})
    answer = send_raw(
        live_server, "POST /api/transactions HTTP/1.1",
        [("Connection", "close"), ("Authorization", f"Bearer {key}"), ("Content-Type", "application/json"),
         ("Idempotency-Key", "evt_1"), ("Idempotency-Key", "evt_2")],
        body.encode(),
    )
    assert_problem_with_request_id(answer, 422, "validation_error")
    assert "Idempotency-Key" in answer[2]["errors"]


# --- answered by gunicorn, in the same shape ----------------------------------------------------------


def test_a_header_beyond_gunicorns_limit_is_a_problem_too(live_server):
    answer = send_raw(live_server, *balance_request([("X-Trace", "t" * 16_400)]))
    assert_problem_with_request_id(answer, 431, "request_header_fields_too_large")


def test_more_headers_than_gunicorn_reads_is_a_problem_too(live_server):
    answer = send_raw(live_server, *balance_request([(f"X-Extra-{index}", "1") for index in range(120)]))
    assert_problem_with_request_id(answer, 431, "request_header_fields_too_large")


def test_a_request_line_beyond_gunicorns_limit_is_a_problem_too(live_server):
    answer = send_raw(live_server, *balance_request([], path="/api/transactions?type=" + "x" * 8200))
    assert_problem_with_request_id(answer, 414, "uri_too_long")


@pytest.mark.parametrize("value", ["a\x01b", "a\x7fb", "a\x00b"])
def test_a_control_character_in_a_header_is_a_problem_too(live_server, value):
    answer = send_raw(live_server, *balance_request([("X-Trace", value)]))
    assert_problem_with_request_id(answer, 400, "bad_request")
