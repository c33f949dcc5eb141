"""The feed relayed into a real NATS JetStream (Debian's nats-server; .ci/run installs it): every event
once, in feed order, across a relay killed at any moment."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import pytest
import requests

from transactions_service import relay
from transactions_service.ledger import store
from transactions_service.ledger.rules import feed_cursor

from .conftest import REPO_ROOT, TEST_SECRET
from .helpers import bearer
from .test_events import all_events


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    """A JetStream-enabled nats-server on loopback, with its store in a directory of its own."""
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is missing; CI must run the JetStream relay tests (.ci/run installs it)")
        pytest.skip("nats-server is not installed (apt-get install nats-server); CI runs these tests")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store_dir = tmp_path_factory.mktemp("jetstream")
    server = subprocess.Popen([binary, "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def settings(nats_url, request):
    """A stream and a relay name of the test's own, so tests do not read each other's messages."""
    suffix = str(abs(hash(request.node.name)))[:8]
    return relay.RelaySettings(url=nats_url, stream=f"LEDGER{suffix}", subject_prefix=f"ledger{suffix}",
                               name=f"test-{suffix}", idle_seconds=0.05)


def stream_messages(settings):
    """Every message in the stream, in stream order: (subject, headers, body)."""

    async def read():
        connection = await nats.connect(settings.url)
        try:
            js = connection.jetstream()
            info = await js.stream_info(settings.stream)
            found = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
                message = await js.get_msg(settings.stream, seq=seq)
                found.append((message.subject, message.headers, json.loads(message.data)))
            return found
        finally:
            await connection.close()

    return asyncio.run(read())


def relay_until(app, settings, done, timeout=30):
    """Run the relay in a thread until ``done(published)`` holds; returns how many it published."""
    outcome = {}

    def run():
        async def main():
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout

            def on_page(published):
                if done(published):
                    stopping.set()

            async def watchdog():
                while not stopping.is_set():
                    if loop.time() > deadline:
                        stopping.set()
                    await asyncio.sleep(0.05)

            guard = asyncio.create_task(watchdog())
            if done(0):
                stopping.set()
            outcome["published"] = await relay.relay(app, settings, stopping, on_page)
            guard.cancel()

        asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout + 10)
    return outcome["published"]


def test_every_event_is_published_once_in_feed_order_with_its_id(api, app, settings, service_token):
    reader = service_token("events:read")
    user_id = api.funded_user(1000)
    hold = api.usage(user_id, credits=-10, status="pending").json
    api.settle(hold["id"], "completed")
    for _ in range(3):
        api.usage(user_id, credits=-1)
    feed, _ = all_events(api, reader)
    assert relay_until(app, settings, lambda published: published >= len(feed)) == len(feed)
    messages = stream_messages(settings)
    assert [body for _subject, _headers, body in messages] == feed
    assert [headers["Nats-Msg-Id"] for _subject, headers, _body in messages] == [event["id"] for event in feed]
    assert [subject for subject, _headers, _body in messages] == [f"{settings.subject_prefix}.{e['type']}" for e in feed]
    with app.app_context():
        assert feed_cursor(store.relay_position(settings.name)) == messages[-1][1][relay.CURSOR_HEADER]


def test_a_relay_that_forgot_where_it_got_to_continues_from_the_stream_not_the_start(api, app, settings, monkeypatch):
    user_id = api.funded_user(1000)
    api.usage(user_id, credits=-1)
    monkeypatch.setattr(store, "save_relay_position", lambda name, position: None)  # killed before it remembers
    assert relay_until(app, settings, lambda published: published >= 2) == 2
    api.usage(user_id, credits=-1)
    assert relay_until(app, settings, lambda published: published >= 1, timeout=5) == 1  # only the new one
    assert [body["sequence"] for _subject, _headers, body in stream_messages(settings)] == [1, 2, 3]


def test_every_event_arrives_once_in_order_across_a_worker_killed_again_and_again(
    api, app, settings, database_url, live_server, service_token, tmp_path
):
    reader = service_token("events:read")
    users = [api.funded_user(10_000) for _ in range(3)]
    _, start = all_events(api, reader)
    environment = {
        **os.environ, "DATABASE_URL": database_url, "JWT_SECRET_KEY": TEST_SECRET, "LOG_LEVEL": "WARNING",
        "EVENTS_NATS_URL": settings.url, "EVENTS_NATS_STREAM": settings.stream, "EVENTS_RELAY_LEASE_SECONDS": "1",
    }
    # The relay as it runs in production: inside the webhook worker, which kill -9 takes down with it.
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "webhooks", "work"]
    writing = threading.Event()

    def write():
        index = 0
        while not writing.is_set():
            body = {"user_id": str(users[index % 3]), "type": "usage", "amount": "0", "credits": -1,
                    "description": f"relay {index}"}
            requests.post(f"{live_server}/api/transactions", json=body, headers=bearer(api.admin_token), timeout=30)
            index += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(4):  # start the relay, let it publish a little, kill it where it stands
            published = stream_count(settings)
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while stream_count(settings) <= published and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        writing.set()
        writer.join()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        feed, _ = all_events(api, reader)
        deadline = time.monotonic() + 60
        while len(stream_messages(settings)) < len(feed) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()
    ids = [headers["Nats-Msg-Id"] for _subject, headers, _body in stream_messages(settings)]
    assert ids == [event["id"] for event in feed]  # each once, in the feed's order
    assert len(all_events(api, reader, after=start)[0]) > 20  # the relay was killed while writes went on


def test_one_relay_publishes_at_a_time_and_another_takes_over_when_it_stops(api, app, settings, service_token):
    reader = service_token("events:read")
    user_id = api.funded_user(1000)
    api.usage(user_id, credits=-1)
    first_done, results = threading.Event(), {}

    def first():  # holds the lease until told to stop
        results["first"] = relay_until(app, settings, lambda published: first_done.is_set() and published > 0)

    holder = threading.Thread(target=first)
    holder.start()
    deadline = time.monotonic() + 20
    while stream_count(settings) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = dataclasses.replace(settings, lease_seconds=0.3)  # it looks for the lease often
    assert relay_until(app, second, lambda published: published > 0, timeout=2) == 0  # the lease is held
    first_done.set()
    api.usage(user_id, credits=-1)  # for the first to see, and stop on
    holder.join(30)
    api.usage(user_id, credits=-1)
    assert relay_until(app, second, lambda published: published >= 1, timeout=10) == 1  # released: it took over
    feed, _ = all_events(api, reader)
    assert [headers["Nats-Msg-Id"] for _subject, headers, _body in stream_messages(settings)] == [e["id"] for e in feed]


def stream_count(settings):
    """How many messages the stream holds (none before the relay has made it)."""

    async def count():
        connection = await nats.connect(settings.url)
        try:
            return (await connection.jetstream().stream_info(settings.stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await connection.close()

    return asyncio.run(count())
