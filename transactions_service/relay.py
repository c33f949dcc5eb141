"""The event feed, relayed into a NATS JetStream stream: every event once, in feed order, across restarts.

For consumers the feed and webhooks do not serve well (finance's warehouse,
several internal readers, another region): they read from JetStream, not from
us. ``flask --app wsgi events relay`` reads the feed from where it left off
(``event_relays``), publishes each event to ``ledger.<type>`` and waits for
the stream's acknowledgement before the next, then remembers how far it got.

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
import signal
from collections.abc import Callable
from dataclasses import dataclass

import nats
from flask import Flask
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

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

    @classmethod
    def from_config(cls, config: dict) -> RelaySettings:
        return cls(url=config["EVENTS_NATS_URL"], stream=config["EVENTS_NATS_STREAM"])


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
    """Relay the feed until ``stopping`` is set; returns how many events it published."""
    connection = await nats.connect(settings.url, name=f"transactions-relay-{settings.name}")
    published = 0
    try:
        js = connection.jetstream()
        with app.app_context():
            remembered = store.relay_position(settings.name)
        position = max(remembered, await _stream_position(js, settings) or remembered)
        log.info("relaying the feed after %s into %s", feed_cursor(position), settings.stream)
        while not stopping.is_set():
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
    finally:
        await connection.drain()
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
