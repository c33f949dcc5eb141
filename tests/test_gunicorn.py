"""The service under gunicorn with its production settings."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import pytest
import requests
from sqlalchemy import text

from transactions_service.scopes import SERVICE_SCOPES

from .conftest import running_gunicorn

pytestmark = pytest.mark.slow
METRICS_TOKEN = "scrape-" + uuid.uuid4().hex


@pytest.fixture
def server(database_url, tmp_path):
    with running_gunicorn(database_url, tmp_path, workers=2, METRICS_TOKEN=METRICS_TOKEN) as running:
        yield running


@pytest.fixture
def admin(service_token):
    return {"Authorization": f"Bearer {service_token(*sorted(SERVICE_SCOPES), name='ops-test')}"}


def funded_user(base_url, admin, credits=100):
    user_id = uuid.uuid4()
    requests.put(f"{base_url}/api/users/{user_id}", headers=admin, timeout=10).raise_for_status()
    purchase = {"user_id": str(user_id), "type": "purchase", "amount": "1", "credits": credits, "description": "p"}
    requests.post(f"{base_url}/api/transactions", json=purchase, headers=admin, timeout=10).raise_for_status()
    return user_id


def worker_pids(master_pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().split(") ")[1].split()[1]) == master_pid:
                        children.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return children


def test_sigterm_lets_an_in_flight_request_finish(server, admin, engine):
    process, base_url = server
    user_id = funded_user(base_url, admin)
    spend = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -10, "description": "in flight"}
    outcome = {}
    with engine.connect() as blocker, engine.connect() as observer:
        blocker.execute(text("SELECT 1 FROM user_balances WHERE user_id = :id FOR UPDATE"), {"id": user_id})

        def send():
            outcome["response"] = requests.post(f"{base_url}/api/transactions", json=spend, headers=admin, timeout=30)

        thread = threading.Thread(target=send)
        thread.start()
        deadline = time.monotonic() + 30
        # Polled from its own connection in autocommit: pg_stat_activity is a snapshot per transaction.
        # The spend waits on the blocker's row lock (its text is the EXECUTE of a prepared statement).
        observer = observer.execution_options(isolation_level="AUTOCOMMIT")
        while not observer.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
        ).scalar():
            assert time.monotonic() < deadline, "the spend never reached the database"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None, "gunicorn quit with a request in flight"
        blocker.rollback()
    thread.join(timeout=30)
    assert outcome["response"].status_code == 201
    assert process.wait(timeout=30) == 0


def test_a_killed_worker_is_replaced_and_service_continues(server, admin):
    process, base_url = server
    user_id = funded_user(base_url, admin)
    deadline = time.monotonic() + 30
    while len(victims := worker_pids(process.pid)) < 2:
        assert time.monotonic() < deadline, "gunicorn never had its two workers"
        time.sleep(0.1)
    os.kill(victims[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(set(worker_pids(process.pid)) - set(victims)) < 1:
        assert time.monotonic() < deadline, "the master did not replace the worker"
        time.sleep(0.1)
    for _ in range(10):
        response = requests.get(f"{base_url}/api/balance", params={"user_id": str(user_id)}, headers=admin, timeout=10)
        assert response.status_code == 200
        assert response.json()["balance"] == 100


def test_metrics_add_up_across_workers(server, admin):
    _process, base_url = server
    for _ in range(20):
        assert requests.get(f"{base_url}/api/balance", params={"user_id": str(uuid.uuid4())}, headers=admin, timeout=10).ok
    text_format = requests.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    ).text
    match = re.search(r'http_requests_total\{method="GET",route="/api/balance",status="200"\} (\d+)', text_format)
    assert match and float(match.group(1)) == 20


def test_metrics_on_an_internal_port(database_url, tmp_path, admin):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running_gunicorn(database_url, tmp_path, workers=2, METRICS_PORT=str(port)) as (_process, base_url):
        requests.get(f"{base_url}/api/balance", params={"user_id": str(uuid.uuid4())}, headers=admin, timeout=10)
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'route="/api/balance"' in scraped
