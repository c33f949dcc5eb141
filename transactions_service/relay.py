"""The event feed, relayed into a NATS JetStream stream: every event once, in feed order, across restarts.

For consumers the feed and webhooks do not serve well (finance's warehouse,
several internal readers, another region): they read from JetStream, not from
us. The relay runs in the webhook worker when ``EVENTS_NATS_URL`` is set
(``RelayThread``), or alone as ``flask --app wsgi events relay``. It reads the
feed from where it left off (``event_relays``), publishes each event to
``ledger.<type>`` and waits for the stream's acknowledgement before the next,
then remembers how far it got.

One relay publishes at a time, however many workers run one: it holds a
lease on its ``event_relays`` row (``EVENTS_RELAY_LEASE_SECONDS``), renewed
as it goes, and the others wait to take it over when it runs out. Two relays
at once would still keep the stream's order (each publishes in feed order
and waits for each acknowledgement), but one stalled for longer than the
duplicate window would publish old events again when it woke.

Nothing is published twice: each message carries the event id as
``Nats-Msg-Id``, which JetStream drops as a duplicate within the stream's
duplicate window, and its feed position as ``Ledger-Cursor``, from which a
relay that starts again continues, whatever it had managed to remember. A
relay killed between publishing and remembering therefore neither loses
events nor repeats them, however long it stays down (ADR 0006).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import nats
from flask import Flask
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.exc import DBAPIError

from .api.schemas import event_json
from .ledger import store
from .ledger.rules import feed_cursor, feed_position
from .ledger.store import Event, FeedPosition

log = logging.getLogger(__name__)

CURSOR_HEADER = "Ledger-Cursor"


@dataclass(frozen=True)
class RelaySettings:
    url: str
    stream: str = "LEDGER"
    subject_prefix: str = "ledger"
    name: str = "jetstream"  # the relay's row in event_relays
    page_size: int = 100
    idle_seconds: float = 0.2
    lease_seconds: float = 15

    @classmethod
    def from_config(cls, config: dict) -> RelaySettings:
        return cls(url=config["EVENTS_NATS_URL"], stream=config["EVENTS_NATS_STREAM"],
                   lease_seconds=config["EVENTS_RELAY_LEASE_SECONDS"])


async def _stream_position(js: JetStreamContext, settings: RelaySettings) -> FeedPosition | None:
    """The feed position of the stream's last message, making the stream first if there is none."""
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        await js.add_stream(name=settings.stream, subjects=[f"{settings.subject_prefix}.>"])
        log.info("made the JetStream stream %s for %s.>", settings.stream, settings.subject_prefix)
        return None
    if not info.state.last_seq:
        return None
    last = await js.get_msg(settings.stream, seq=info.state.last_seq)
    cursor = (last.headers or {}).get(CURSOR_HEADER)
    return feed_position(cursor) if cursor else None


async def _publish(js: JetStreamContext, settings: RelaySettings, event: Event) -> None:
    headers = {"Nats-Msg-Id": event.id, CURSOR_HEADER: feed_cursor(FeedPosition(event.xid, event.position))}
    subject = f"{settings.subject_prefix}.{event.type}"
    await js.publish(subject, event_json(event).encode(), stream=settings.stream, headers=headers)


async def relay(app: Flask, settings: RelaySettings, stopping: asyncio.Event,
                on_page: Callable[[int], None] | None = None) -> int:
    """Relay the feed while this relay holds the lease, until ``stopping`` is set; returns how many it published."""
    connection = await nats.connect(settings.url, name=f"transactions-relay-{settings.name}")
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    published = 0
    try:
        js = connection.jetstream()
        while not stopping.is_set():
            if _leased(app, settings, holder):
                published = await _relay_while_leased(app, settings, js, holder, stopping, published, on_page)
            else:  # another relay is publishing: wait to take over if its lease runs out
                await _sleep_unless(stopping, settings.lease_seconds / 3)
    finally:
        with app.app_context():
            store.release_relay_lease(settings.name, holder)
        await connection.drain()
    return published


def _leased(app: Flask, settings: RelaySettings, holder: str) -> bool:
    with app.app_context():
        return store.take_relay_lease(settings.name, holder, settings.lease_seconds)


async def _relay_while_leased(app: Flask, settings: RelaySettings, js: JetStreamContext, holder: str,
                              stopping: asyncio.Event, published: int, on_page: Callable[[int], None] | None) -> int:
    """Publish page after page, renewing the lease a third of the way through it, until it is lost or stopping."""
    with app.app_context():
        remembered = store.relay_position(settings.name)
    position = max(remembered, await _stream_position(js, settings) or remembered)
    log.info("relaying the feed after %s into %s", feed_cursor(position), settings.stream)
    renew_at = time.monotonic() + settings.lease_seconds / 3
    while not stopping.is_set():
        if time.monotonic() >= renew_at:
            if not _leased(app, settings, holder):
                log.warning("the relay's lease passed to another relay; waiting to take it back")
                return published
            renew_at = time.monotonic() + settings.lease_seconds / 3
        with app.app_context():
            events = store.events_page(position, settings.page_size, types=[], user_id=None)
        if not events:
            await _sleep_unless(stopping, settings.idle_seconds)
            continue
        for event in events:  # one at a time, acknowledged: the stream's order is the feed's
            await _publish(js, settings, event)
        position = FeedPosition(events[-1].xid, events[-1].position)
        with app.app_context():
            store.save_relay_position(settings.name, position)
        published += len(events)
        if on_page is not None:
            on_page(published)
    return published


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        pass


def run(app: Flask, settings: RelaySettings) -> int:
    """Relay until SIGTERM or SIGINT, finishing the page in flight; for the ``events relay`` command."""

    async def main() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        return await relay(app, settings, stopping)

    return asyncio.run(main())


class RelayThread:
    """The relay on a thread of its own, beside the webhook worker (``webhooks work`` with EVENTS_NATS_URL).

    A NATS server or database that goes away stops the relay, not the worker: it starts again five
    seconds later, from where the stream and the database say it got to.
    """

    def __init__(self, app: Flask, settings: RelaySettings):
        self.app, self.settings = app, settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="relay", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()

    def stop(self) -> None:
        """Stop once the page in flight is published and remembered."""
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(60)

    async def _main(self) -> None:
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        while not self.stopping.is_set():
            try:
                await relay(self.app, self.settings, self.stopping)
            except (DBAPIError, OSError, nats.errors.Error) as error:  # the database or NATS is away
                log.warning("the JetStream relay stopped (%s: %s); starting it again in 5 s", type(error).__name__,
                            str(error).splitlines()[0] if str(error) else "")
                await _sleep_unless(self.stopping, 5)
            except Exception:  # noqa: BLE001 (whatever stopped it, the worker goes on and the relay starts again)
                log.exception("the JetStream relay failed; starting it again in 5 s")
                await _sleep_unless(self.stopping, 5)
