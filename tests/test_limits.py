"""Rate limits (limits.py): per identity across every route, per client address, windows
that slide, the client address behind trusted proxies, and counts shared through Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import limits.storage.memory
import pytest
import requests

from .conftest import make_app, running_gunicorn
from .helpers import bearer

UNLIMITED = "1000000 per minute"


def limited_client(database_url, **settings):
    config = {"RATELIMIT_DEFAULT": UNLIMITED, "RATELIMIT_PER_ADDRESS": UNLIMITED, **settings}
    return make_app(database_url, **config).test_client()


def balance(client, token, **headers):
    return client.get("/api/balance", headers={**bearer(token), **headers}).status_code


# --- per address -------------------------------------------------------------------------------


def test_tokens_for_fresh_user_ids_are_limited_per_address(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_PER_ADDRESS="5 per minute")
    statuses = [balance(client, user_token(uuid.uuid4())) for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2


def test_requests_without_a_valid_token_count_against_the_address(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_PER_ADDRESS="3 per minute")
    assert [balance(client, "not-a-token") for _ in range(3)] == [401] * 3
    assert balance(client, user_token(uuid.uuid4())) == 429


def test_services_are_counted_by_key_not_by_address(database_url, service_token):
    client = limited_client(database_url, RATELIMIT_PER_ADDRESS="3 per minute", RATELIMIT_SERVICE_DEFAULT="6 per minute")
    key = service_token("transactions:read")
    statuses = [client.get(f"/api/balance?user_id={uuid.uuid4()}", headers=bearer(key)).status_code for _ in range(7)]
    assert statuses == [200] * 6 + [429]


# --- per identity, across routes ------------------------------------------------------------------


def test_a_users_limit_counts_every_route_together(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_DEFAULT="3 per minute")
    headers = bearer(user_token(uuid.uuid4()))
    paths = ["/api/balance", "/api/transactions", "/api/balance", "/api/transactions"]
    assert [client.get(path, headers=headers).status_code for path in paths] == [200, 200, 200, 429]


# --- the client address behind proxies ----------------------------------------------------------------


def test_forwarded_addresses_are_ignored_unless_proxies_are_trusted(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_PER_ADDRESS="2 per minute")
    statuses = [balance(client, user_token(uuid.uuid4()), **{"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(3)]
    assert statuses == [200, 200, 429]


def test_behind_a_trusted_proxy_each_client_address_is_limited_on_its_own(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_PER_ADDRESS="2 per minute", TRUSTED_PROXIES=1)
    first = {"X-Forwarded-For": "203.0.113.7"}
    # A client cannot spoof its way out: the trusted proxy appends the real address last.
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert [balance(client, user_token(uuid.uuid4()), **first) for _ in range(2)] == [200, 200]
    assert balance(client, user_token(uuid.uuid4()), **spoofed) == 429
    assert balance(client, user_token(uuid.uuid4()), **{"X-Forwarded-For": "203.0.113.8"}) == 200


# --- windows that slide ------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_windows_slide_so_a_window_edge_does_not_double_the_limit(database_url, user_token, monkeypatch):
    clock = Clock(60 * 30_000_000 + 50.0)  # 10 s before a minute's edge
    monkeypatch.setattr(limits.storage.memory, "time", clock)
    client = limited_client(database_url, RATELIMIT_DEFAULT="10 per minute")
    token = user_token(uuid.uuid4())
    assert [balance(client, token) for _ in range(10)] == [200] * 10
    clock.now += 11  # 1 s past the edge: a fixed window would allow 10 more at once
    assert [balance(client, token) for _ in range(3)] == [200, 429, 429]
    clock.now += 60  # a full window later, the count has slid out
    assert balance(client, token) == 200


# --- counts shared through Redis -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback (Debian's; .ci/run installs it)."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing; CI must run the shared rate-limit tests (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server); CI runs these tests")
    import redis

    port = _free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_two_instances_sharing_redis_count_together(database_url, user_token, redis_url):
    settings = {"RATELIMIT_DEFAULT": "4 per minute", "RATELIMIT_STORAGE_URI": redis_url}
    first, second = limited_client(database_url, **settings), limited_client(database_url, **settings)
    token = user_token(uuid.uuid4())
    statuses = [balance(client, token) for client in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.mark.slow
def test_gunicorn_workers_sharing_redis_let_the_limit_through_once(database_url, tmp_path, user_token, redis_url):
    settings = {"RATELIMIT_DEFAULT": "10 per minute", "RATELIMIT_STORAGE_URI": redis_url}
    token = bearer(user_token(uuid.uuid4()))
    with running_gunicorn(database_url, tmp_path, workers=4, **settings) as (_process, base_url):
        # A connection per request, so that all four workers answer some.
        statuses = [requests.get(f"{base_url}/api/balance", headers=token, timeout=10).status_code for _ in range(30)]
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_an_unreachable_redis_costs_the_sharing_not_the_service(database_url, user_token):
    client = limited_client(database_url, RATELIMIT_DEFAULT="3 per minute",
                            RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{_free_port()}/0")
    token = user_token(uuid.uuid4())
    # Each worker counts in memory meanwhile: the limit still holds.
    assert [balance(client, token) for _ in range(4)] == [200, 200, 200, 429]
