"""Where the webhook worker waits: a notification of new events, a nudge from inside, or the poll interval.

Waking on every write would cost the writes: a commit that notifies takes
PostgreSQL's notification-queue lock, one commit at a time. So the writes
notify only while a worker is waiting. A worker about to wait sets
``event_relays.wake_until`` (``store.arm_wake``), looks once more for work
that came in meanwhile, and waits on its ``LISTEN`` connection; from then on
each statement that adds events notifies ``ledger_events`` (the trigger of
migration 0009), and the first one wakes it. Awake, it clears the flag again.

A write racing the worker's falling asleep (it read the flag before it was
set and committed after the last look) does not notify; the next write
does, and the poll interval bounds the wait when none comes. So do events
held back from the feed by an older transaction still open (ADR 0006,
decision 3), and deliveries whose retry falls due.

The ``LISTEN`` connection is direct (``DATABASE_DIRECT_URL``): a pooler in
transaction mode keeps no session to listen on, so behind one the worker
only polls unless it is told the server's own address. A connection that
breaks is made again on the next wait, and polling covers the gap.
"""

from __future__ import annotations

import logging
import os
import select

import psycopg2
from sqlalchemy.engine import make_url

from .store import WAKE_CHANNEL

log = logging.getLogger(__name__)


class Wake:
    def __init__(self, direct_url: str | None):
        self.dsn = make_url(direct_url).set(drivername="postgresql").render_as_string(hide_password=False) \
            if direct_url else None
        self.connection = None
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def listening(self) -> bool:
        """Whether notifications can wake the worker (connecting, or connecting again, if need be)."""
        if self.dsn is None:
            return False
        if self.connection is None or self.connection.closed:
            try:
                self.connection = psycopg2.connect(self.dsn, connect_timeout=5, application_name="webhook-worker")
                self.connection.autocommit = True
                with self.connection.cursor() as cursor:
                    cursor.execute(f"LISTEN {WAKE_CHANNEL}")
            except psycopg2.Error as error:
                log.warning("webhook worker: cannot LISTEN (%s); polling until it can", type(error).__name__)
                self._drop()
                return False
        return True

    def nudge(self) -> None:
        """Wake the worker from inside the process: a delivery finished, or it is asked to stop."""
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # the pipe is full of nudges already: the worker wakes anyway
            pass

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a notification or a nudge; True if one came."""
        watched = [self._read] + ([self.connection] if self.connection is not None else [])
        ready, _, _ = select.select(watched, [], [], seconds)
        if self._read in ready:
            while True:
                try:
                    if not os.read(self._read, 4096):
                        break
                except BlockingIOError:
                    break
        if self.connection is not None and self.connection in ready:
            try:
                self.connection.poll()
                self.connection.notifies.clear()
            except psycopg2.Error:
                log.warning("webhook worker: the LISTEN connection broke; polling until it is back")
                self._drop()
        return bool(ready)

    def close(self) -> None:
        self._drop()
        os.close(self._read)
        os.close(self._write)

    def _drop(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except psycopg2.Error:
                pass
        self.connection = None
