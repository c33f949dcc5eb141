"""Webhooks: endpoints managed over the API, and the worker delivering signed events to a real receiver."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from transactions_service.webhooks import destinations
from transactions_service.webhooks.worker import Worker, WorkerSettings

from .conftest import REPO_ROOT, TEST_SECRET
from .helpers import bearer

FAST = WorkerSettings(schedule=(0, 0.2, 0.2), timeout_seconds=2, lease_seconds=2, allow_http=True, allow_private=True,
                      poll_seconds=0.05)


class Receiver:
    """A webhook receiver on loopback that answers each request with the next status of ``script`` (then 200)."""

    def __init__(self, script=(), delay=0.0):
        self.script, self.delay, self.received = list(script), delay, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers.items()), body))
                time.sleep(receiver.delay)
                self.send_response(receiver.script.pop(0) if receiver.script else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(script=(), delay=0.0):
        made.append(Receiver(script, delay))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def manager(service_token):
    return service_token("webhooks:manage", name="webhook-admin")


@pytest.fixture
def local_destinations(app, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_HTTP", True)
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOW_PRIVATE_NETWORKS", True)


def register(api, manager, url, event_types=("transaction.created", "transaction.updated")):
    response = api.client.post("/api/webhook-endpoints", headers=bearer(manager),
                               json={"url": url, "event_types": list(event_types), "description": "finance mirror"})
    assert response.status_code == 201, response.json
    return response.json


def work_until(app, done, settings=FAST, timeout=20):
    """Run a worker in a thread until ``done()`` holds (or the timeout passes)."""
    worker = Worker(app, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(30)
    assert done()


def test_a_delivery_is_signed_as_standard_webhooks_says_and_verifies(api, app, manager, receiver, local_destinations):
    hook = receiver()
    endpoint = register(api, manager, hook.url)
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] == ["transaction.created",
                                                                                   "transaction.updated"]
    user_id = api.register()
    purchase = api.purchase(user_id).json
    work_until(app, lambda: len(hook.received) == 1)
    headers, body = hook.received[0]
    lowered = {name.lower(): value for name, value in headers.items()}
    payload = Webhook(endpoint["secret"]).verify(body, lowered)
    assert payload == {"type": "transaction.created", "timestamp": purchase["created_at"], "data": purchase}
    event = api.client.get("/api/events", headers=bearer(api.admin_token)).json["data"][0]
    assert lowered["webhook-id"] == event["id"]
    with pytest.raises(Exception):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, lowered)


def test_a_receiver_failing_twice_gets_the_event_three_times_with_one_id(api, app, manager, receiver, local_destinations):
    hook = receiver(script=[500, 503])
    endpoint = register(api, manager, hook.url)
    api.purchase(api.register())
    work_until(app, lambda: len(hook.received) == 3)
    assert len({headers["webhook-id"] for headers, _ in hook.received}) == 1
    (delivery,) = api.client.get(f"/api/webhook-endpoints/{endpoint['id']}/deliveries", headers=bearer(manager)).json["data"]
    assert (delivery["status"], delivery["attempt_count"]) == ("delivered", 3)
    assert [attempt["status_code"] for attempt in delivery["attempt_log"]] == [500, 503, 200]
    assert delivery["attempt_log"][0]["next_attempt_at"] is not None


def test_after_the_last_retry_a_delivery_fails_and_can_be_retried_by_hand(api, app, manager, receiver, local_destinations):
    hook = receiver(script=[500, 500, 500])
    endpoint = register(api, manager, hook.url)
    api.purchase(api.register())
    deliveries = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"

    def status():
        data = api.client.get(deliveries, headers=bearer(manager)).json["data"]
        return data[0]["status"] if data else None

    work_until(app, lambda: status() == "failed")
    (delivery,) = api.client.get(deliveries, headers=bearer(manager)).json["data"]
    retried = api.client.post(f"{deliveries}/{delivery['id']}/retry", headers=bearer(manager))
    assert (retried.status_code, retried.json["status"]) == (200, "pending")
    work_until(app, lambda: status() == "delivered")
    assert len({headers["webhook-id"] for headers, _ in hook.received}) == 1 and len(hook.received) == 4


def test_an_endpoint_gets_only_the_types_it_subscribed_to(api, app, manager, receiver, local_destinations):
    lows, everything = receiver(), receiver()
    register(api, manager, lows.url, ["balance.low"])
    register(api, manager, everything.url)
    user_id = api.funded_user(100)
    api.client.put(f"/api/users/{user_id}", json={"low_balance_threshold": 50}, headers=bearer(api.admin_token))
    api.usage(user_id, credits=-60)
    work_until(app, lambda: len(lows.received) == 1 and len(everything.received) == 2)
    time.sleep(0.3)
    assert [json.loads(body)["type"] for _, body in lows.received] == ["balance.low"]


def test_a_worker_killed_mid_delivery_leaves_it_to_the_next_with_the_same_id(
    api, manager, receiver, database_url, local_destinations
):
    hook = receiver(delay=3)  # the first worker is killed while the receiver is still answering
    environment = {
        **os.environ, "DATABASE_URL": database_url, "JWT_SECRET_KEY": TEST_SECRET, "LOG_LEVEL": "WARNING",
        "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "WEBHOOK_LEASE_SECONDS": "1",
        "WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.2",
    }
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "webhooks", "work"]
    register(api, manager, hook.url)
    api.purchase(api.register())
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=environment)
    deadline = time.monotonic() + 20
    while not hook.received and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    hook.delay = 0
    second = subprocess.Popen(command, cwd=REPO_ROOT, env=environment)
    try:
        deadline = time.monotonic() + 20
        while len(hook.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    assert len(hook.received) >= 2
    assert len({headers["webhook-id"] for headers, _ in hook.received}) == 1


# --- managing endpoints -----------------------------------------------------------------------------


def test_endpoints_are_listed_changed_rotated_and_deleted(api, manager, local_destinations):
    endpoint = register(api, manager, "http://127.0.0.1:9/hooks")
    path = f"/api/webhook-endpoints/{endpoint['id']}"
    listed = api.client.get("/api/webhook-endpoints", headers=bearer(manager)).json["data"]
    assert [item["id"] for item in listed] == [endpoint["id"]] and "secret" not in listed[0]
    changed = api.client.patch(path, json={"event_types": ["lot.expired"], "disabled": True}, headers=bearer(manager))
    assert (changed.json["event_types"], changed.json["disabled"]) == (["lot.expired"], True)
    for not_a_boolean in (0, 1, "false"):  # 0 and 1 were taken as false and true
        refused = api.client.patch(path, json={"disabled": not_a_boolean}, headers=bearer(manager))
        assert refused.status_code == 422 and refused.json["errors"] == {"disabled": ["Must be true or false."]}
    rotated = api.client.post(f"{path}/rotate-secret", headers=bearer(manager)).json
    assert rotated["secret"] != endpoint["secret"] and rotated["secret"].startswith("whsec_")
    assert "secret" not in api.client.get(path, headers=bearer(manager)).json
    assert api.client.delete(path, headers=bearer(manager)).status_code == 204
    assert api.client.get(path, headers=bearer(manager)).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"url": "https://example.com/h", "event_types": []}, "event_types"),
    ({"url": "https://example.com/h", "event_types": ["transaction.deleted"]}, "event_types"),
    ({"url": "https://example.com/h", "event_types": ["lot.expired", "lot.expired"]}, "event_types"),
    ({"event_types": ["lot.expired"]}, "url"),
    ({"url": "https://example.com/h", "event_types": ["lot.expired"], "secret": "mine"}, "secret"),
])
def test_a_malformed_endpoint_is_refused_naming_the_field(api, manager, body, field):
    response = api.client.post("/api/webhook-endpoints", json=body, headers=bearer(manager))
    assert (response.status_code, response.json["code"]) == (422, "validation_error")
    assert field in response.json["errors"]


@pytest.mark.parametrize("url", [
    "http://example.com/hooks",  # plain http
    "https://127.0.0.1/hooks",  # loopback
    "https://10.0.0.8/hooks",  # private
    "https://169.254.169.254/latest/meta-data",  # the cloud metadata service
    "https://[::1]/hooks",
    "https://[::ffff:127.0.0.1]/hooks",  # loopback in IPv6 clothing
    "https://localhost/hooks",
    "https://user:pass@example.com/hooks",
])
def test_an_internal_or_plain_http_destination_is_refused_at_registration(api, manager, url):
    response = api.client.post("/api/webhook-endpoints", json={"url": url, "event_types": ["lot.expired"]},
                               headers=bearer(manager))
    assert (response.status_code, response.json["code"]) == (422, "validation_error")
    assert "url" in response.json["errors"]


def test_a_destination_that_turns_internal_is_refused_at_delivery_too(monkeypatch):
    monkeypatch.setattr(destinations.socket, "getaddrinfo", lambda *args, **kwargs: [(2, 1, 6, "", ("10.1.2.3", 443))])
    with pytest.raises(destinations.DestinationRefused, match="private network"):
        destinations.check("https://hooks.example.com/x", allow_http=False, allow_private=False)


def test_only_services_with_webhooks_manage_manage_endpoints(api, service_token, user_token):
    as_user = api.client.get("/api/webhook-endpoints", headers=bearer(user_token(api.register())))
    assert (as_user.status_code, as_user.json["code"]) == (403, "forbidden")
    other = api.client.get("/api/webhook-endpoints", headers=bearer(service_token("events:read")))
    assert (other.status_code, other.json["code"]) == (403, "insufficient_scope")


def test_the_receiver_script_verifies_what_the_worker_sends(api, app, manager, local_destinations, capsys):
    """scripts/webhook_receiver.py, which the README's walk-through points an endpoint at."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import webhook_receiver
    finally:
        sys.path.pop(0)
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), webhook_receiver.handler_for("whsec_" + "B" * 43 + "="))
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    endpoint = register(api, manager, url)
    server.RequestHandlerClass = webhook_receiver.handler_for(endpoint["secret"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        purchase = api.purchase(api.register()).json
        deliveries = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"
        work_until(app, lambda: [d["status"] for d in api.client.get(deliveries, headers=bearer(manager)).json["data"]]
                   == ["delivered"])
    finally:
        server.shutdown()
        server.server_close()
    printed = capsys.readouterr().out
    assert "verified " in printed and purchase["id"] in printed and "REFUSED" not in printed


def test_the_worker_waits_out_a_database_outage_instead_of_dying(api, app, manager, receiver, local_destinations,
                                                                   monkeypatch):
    from sqlalchemy.exc import OperationalError

    from transactions_service.webhooks import store

    hook = receiver()
    register(api, manager, hook.url)
    api.purchase(api.register())
    claim, failures = store.claim_due, []

    def unavailable_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return claim(*args, **kwargs)

    monkeypatch.setattr(store, "claim_due", unavailable_once)
    work_until(app, lambda: len(hook.received) == 1)
    assert failures == [1]


def test_deliveries_page_newest_first_by_cursor(api, app, manager, receiver, local_destinations):
    hook = receiver()
    endpoint = register(api, manager, hook.url)
    user_id = api.funded_user(100)
    api.usage(user_id, credits=-1)
    api.usage(user_id, credits=-1)
    work_until(app, lambda: len(hook.received) == 3)
    path = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"
    first = api.client.get(f"{path}?limit=2", headers=bearer(manager)).json
    second = api.client.get(f"{path}?limit=2&cursor={first['next_cursor']}", headers=bearer(manager)).json
    assert (first["has_more"], second["has_more"], second["next_cursor"]) == (True, False, None)
    pages = first["data"] + second["data"]
    assert len({d["id"] for d in pages}) == 3
    assert [d["created_at"] for d in pages] == sorted((d["created_at"] for d in pages), reverse=True)
    bad = api.client.get(f"{path}?cursor=nope", headers=bearer(manager))
    assert (bad.status_code, bad.json["code"]) == (400, "invalid_cursor")


# --- waking: LISTEN/NOTIFY, and only while a worker waits --------------------------------------------


def notifications(direct_database_url):
    """A LISTEN connection of the test's own on the worker's channel; drain() returns how many arrived."""
    import psycopg2
    from sqlalchemy.engine import make_url

    from transactions_service.webhooks.store import WAKE_CHANNEL

    url = make_url(direct_database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = psycopg2.connect(url)
    connection.autocommit = True
    connection.cursor().execute(f"LISTEN {WAKE_CHANNEL}")

    def drain(wait=0.5):
        time.sleep(wait)
        connection.poll()
        count = len(connection.notifies)
        connection.notifies.clear()
        return count

    return connection, drain


def test_writes_notify_only_while_a_worker_waits(api, app, direct_database_url):
    from transactions_service.webhooks import store

    connection, drain = notifications(direct_database_url)
    try:
        with app.app_context():
            store.start_fan_out()
            user_id = api.funded_user(100)
            drain(0)
            api.usage(user_id, credits=-1)
            assert drain() == 0  # nobody waits: the write took no notification lock
            armed = store.arm_wake(30)
            api.usage(user_id, credits=-1)
            assert drain() == 1
            store.disarm_wake(armed)
            api.usage(user_id, credits=-1)
            assert drain() == 0
    finally:
        connection.close()


def test_an_idle_worker_wakes_on_a_commit_long_before_its_poll(api, app, manager, receiver, local_destinations,
                                                               direct_database_url):
    from transactions_service.webhooks import store

    hook = receiver()
    register(api, manager, hook.url)
    settings = dataclasses.replace(FAST, poll_seconds=60, direct_url=direct_database_url)
    worker = Worker(app, settings)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        with app.app_context():  # asleep: it has asked the writes to wake it
            while not store.worker_waiting() and time.monotonic() < deadline:
                time.sleep(0.05)
        committed = time.monotonic()
        api.purchase(api.register())
        while not hook.received and time.monotonic() < committed + 20:
            time.sleep(0.01)
        assert hook.received and time.monotonic() - committed < 10  # a sixth of one poll interval at most
    finally:
        stopped = time.monotonic()
        worker.stop()
        thread.join(30)
    assert time.monotonic() - stopped < 10  # the stop woke it too, with a minute of its poll to go
    with app.app_context():
        assert not store.worker_waiting()  # woken, it withdrew its request


# --- recording attempts, many at once ----------------------------------------------------------------


def claimed_deliveries(api, app, manager, url, count):
    """``count`` deliveries of one endpoint, fanned out and leased as a worker leases them."""
    from transactions_service.webhooks import store

    endpoint = register(api, manager, url)
    user_id = api.funded_user(100)
    for _ in range(count - 1):
        api.usage(user_id, credits=-1)
    with app.app_context():
        store.start_fan_out()
        while store.fan_out(100):
            pass
        claimed = store.claim_due(100, 60, per_endpoint=100)
    return endpoint, [c for c in claimed if c.endpoint_id == endpoint["id"]]


def endpoint_state(api, manager, endpoint):
    shown = api.client.get(f"/api/webhook-endpoints/{endpoint['id']}", headers=bearer(manager)).json
    return shown["failing_since"], shown["disabled"]


@pytest.mark.parametrize("outcomes, failing_from, disabled", [
    (("failed", "delivered", "failed"), 2, False),  # the run of failures starts after the last success
    (("failed", "failed", "delivered"), None, False),  # a success ends it
    (("failed", "failed", "failed"), 0, True),  # six days of nothing but failures
])
def test_attempts_recorded_together_keep_the_endpoints_run_of_failures_in_order(
    api, app, manager, local_destinations, outcomes, failing_from, disabled
):
    from datetime import datetime, timedelta, timezone

    from transactions_service.webhooks import store

    endpoint, claimed = claimed_deliveries(api, app, manager, "http://127.0.0.1:9/hooks", len(outcomes))
    start = datetime.now(timezone.utc) - timedelta(days=6)
    times = [start, start + timedelta(days=3), start + timedelta(days=6)]
    recorded = [
        (delivery.id, store.Outcome(at, 200 if status == "delivered" else 500, None, 5,
                                    "delivered" if status == "delivered" else "pending", None if status == "delivered"
                                    else at + timedelta(seconds=5)))
        for delivery, status, at in zip(claimed, outcomes, times)
    ]
    with app.app_context():
        store.finish(recorded, disable_after_days=5)
    failing_since, is_disabled = endpoint_state(api, manager, endpoint)
    expected = None if failing_from is None else times[failing_from]
    assert (failing_since and datetime.fromisoformat(failing_since.replace("Z", "+00:00"))) == expected
    assert is_disabled is disabled
    deliveries = api.client.get(f"/api/webhook-endpoints/{endpoint['id']}/deliveries",
                                headers=bearer(manager)).json["data"]
    assert sorted(d["status"] for d in deliveries) == sorted(
        "delivered" if status == "delivered" else "pending" for status in outcomes)


def test_a_slow_endpoints_backlog_leaves_threads_for_the_others(api, app, manager, receiver, local_destinations):
    from transactions_service.webhooks import store

    slow, fast = receiver(delay=3), receiver()
    register(api, manager, slow.url)
    user_id = api.funded_user(100)
    for _ in range(5):
        api.usage(user_id, credits=-1)
    with app.app_context():  # the slow endpoint's six deliveries are queued, and due, first
        store.start_fan_out()
        while store.fan_out(100):
            pass
    register(api, manager, fast.url)
    for _ in range(6):
        api.usage(user_id, credits=-1)
    settings = dataclasses.replace(FAST, concurrency=4, endpoint_concurrency=2, timeout_seconds=10)
    started, reached = time.monotonic(), []

    def fast_all_in():
        if len(fast.received) >= 6 and not reached:
            reached.append((time.monotonic() - started, len(slow.received)))
        return bool(reached)

    work_until(app, fast_all_in, settings=settings)
    seconds, slow_received = reached[0]
    assert seconds < 3 and slow_received <= 2  # not behind the slow endpoint's first answers


def test_prune_deletes_old_finished_deliveries_and_keeps_those_still_being_tried(
    api, app, manager, local_destinations, engine
):
    from datetime import timedelta

    from sqlalchemy import text

    from transactions_service.ids import utcnow
    from transactions_service.webhooks import store

    endpoint, claimed = claimed_deliveries(api, app, manager, "http://127.0.0.1:9/hooks", 3)
    at = utcnow()
    delivered, failed = store.Outcome(at, 204, None, 3, "delivered", None), store.Outcome(at, None, "x", 3, "failed", None)
    with app.app_context():  # one delivered, one failed for good, one still being tried
        store.finish([(claimed[0].id, delivered), (claimed[1].id, failed)], disable_after_days=5)
    with engine.begin() as connection:
        connection.execute(text("UPDATE webhook_deliveries SET created_at = :old"), {"old": at - timedelta(days=31)})
    result = app.test_cli_runner().invoke(args=["events", "prune"])
    assert result.output.strip().endswith("and 2 webhook deliveries")
    path = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"
    left = api.client.get(path, headers=bearer(manager)).json["data"]
    assert [(d["id"], d["status"]) for d in left] == [(claimed[2].id, "pending")]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM webhook_attempts")).scalar() == 0


def test_the_fan_out_seeks_to_its_position_in_the_feed_instead_of_reading_it_from_the_start(engine):
    """Its cost must not grow with the feed: the position is an index condition, not a filter on every event."""
    from sqlalchemy import text

    from transactions_service.webhooks import store

    with engine.begin() as connection:  # a long feed, the fan-out near its end
        connection.execute(text(
            "INSERT INTO ledger_events (type, user_id, sequence, data, created_at) SELECT 'transaction.created',"
            " gen_random_uuid(), 1, '{}', now() FROM generate_series(1, 50000)"))
        connection.execute(text(
            "INSERT INTO event_relays (name, after_xid, after_position) SELECT 'webhooks', xid::text::bigint,"
            " position - 10 FROM ledger_events ORDER BY xid DESC, position DESC LIMIT 1"))
    with engine.begin() as connection:
        connection.execute(text("ANALYZE ledger_events"))
        sql = store._FAN_OUT.replace("%(name)s", "'webhooks'").replace("%(limit)s", "100")
        plan = "\n".join(row[0] for row in connection.execute(text("EXPLAIN (COSTS OFF) " + sql)))
        connection.rollback()
    feed_scan = next(line for line in plan.splitlines() if "ix_ledger_events_feed" in line)
    condition = plan.split(feed_scan, 1)[1].splitlines()[1]
    assert "Index Cond" in condition and "ROW(xid, \"position\") >" in condition, plan
