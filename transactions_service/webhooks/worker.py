"""The webhook worker (``flask --app wsgi webhooks work``): the feed's events, delivered, signed, at least once.

Two jobs in one loop, both safe to run in several workers at once:

- **fan-out**: one statement pages the feed from the fan-out's position
  (``event_relays``, locked for it; a worker that finds it locked skips this
  turn), queues one delivery per event and subscribed endpoint, and moves
  the position past the page;
- **delivery**: it leases due deliveries (``FOR UPDATE SKIP LOCKED``, a lease
  of ``WEBHOOK_LEASE_SECONDS``), at most ``WEBHOOK_ENDPOINT_CONCURRENCY`` of
  one endpoint's at once, and posts each on a thread of the pool, so a slow
  endpoint holds up only its own deliveries. The loop records the finished
  attempts, all of them in one statement. A 2xx is delivered; any other
  answer, a timeout or a refused connection is tried again on
  ``WEBHOOK_RETRY_SCHEDULE``, then failed. A worker killed mid-delivery, or
  after sending and before recording, leaves a lease that runs out, and the
  next worker sends the same ``webhook-id`` again.

Idle, it waits to be woken by the commit of a new event (wake.py), or for
``WEBHOOK_POLL_SECONDS``. Deliveries follow Standard Webhooks, signed with
the ``standardwebhooks`` package, and go to the address the SSRF guard
checked (destinations.py). The body is the one queued at fan-out, so its
data is the state at that event, never read again. SIGTERM stops the loop
and lets the deliveries in flight finish.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError
from standardwebhooks import Webhook

from . import destinations, store
from .wake import Wake

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True)
class WorkerSettings:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    timeout_seconds: float = 10
    lease_seconds: float = 60
    disable_after_days: int = 5
    allow_http: bool = False
    allow_private: bool = False
    concurrency: int = 32
    endpoint_concurrency: int = 16
    poll_seconds: float = 1.0
    page_size: int = 100
    direct_url: str | None = None  # for LISTEN; None polls only

    @classmethod
    def from_config(cls, config: dict) -> WorkerSettings:
        return cls(
            schedule=tuple(config["WEBHOOK_RETRY_SCHEDULE"]), timeout_seconds=config["WEBHOOK_TIMEOUT_SECONDS"],
            lease_seconds=config["WEBHOOK_LEASE_SECONDS"], disable_after_days=config["WEBHOOK_DISABLE_AFTER_DAYS"],
            allow_http=config["WEBHOOK_ALLOW_HTTP"], allow_private=config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"],
            concurrency=config["WEBHOOK_CONCURRENCY"], endpoint_concurrency=config["WEBHOOK_ENDPOINT_CONCURRENCY"],
            poll_seconds=config["WEBHOOK_POLL_SECONDS"],
            direct_url=config["DATABASE_DIRECT_URL"],
        )


def signed_headers(claimed: store.Claimed, at: datetime) -> dict[str, str]:
    """Standard Webhooks' headers: the event's id, the time, and a v1 signature per secret in use."""
    secrets = [claimed.secret] + ([claimed.previous_secret] if claimed.previous_secret else [])
    signatures = " ".join(Webhook(secret).sign(claimed.event_id, at, claimed.payload) for secret in secrets)
    return {
        "webhook-id": claimed.event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "transactions-service-webhooks/1",
    }


def _outcome(claimed: store.Claimed, settings: WorkerSettings, client: httpx.Client) -> store.Outcome:
    started, at = time.monotonic(), datetime.now(timezone.utc)
    status_code, error = None, None
    try:
        response = destinations.post(client, claimed.url, allow_http=settings.allow_http,
                                     allow_private=settings.allow_private, content=claimed.payload.encode(),
                                     headers=signed_headers(claimed, at))
        status_code = response.status_code
    except destinations.DestinationRefused as refused:
        error = f"refused: {refused}"
    except httpx.TimeoutException:
        error = f"timeout after {settings.timeout_seconds:g} s"
    except httpx.HTTPError as failed:
        error = f"{type(failed).__name__}: {failed}"[:500]
    duration_ms = round((time.monotonic() - started) * 1000)
    if status_code is not None and 200 <= status_code < 300:
        return store.Outcome(at, status_code, None, duration_ms, "delivered", None)
    if claimed.attempts < len(settings.schedule):
        next_at = at + timedelta(seconds=settings.schedule[claimed.attempts])
        return store.Outcome(at, status_code, error, duration_ms, "pending", next_at)
    return store.Outcome(at, status_code, error, duration_ms, "failed", None)


class Worker:
    """One loop that touches the database, and a pool of threads that only send.

    The loop records the attempts the threads have finished, all in one statement, then fans out and
    leases what is due; so a worker's statements do not grow with its deliveries, and one worker
    keeps up with the writes (BENCHMARKS.md, scenario I).
    """

    def __init__(self, app: Flask, settings: WorkerSettings):
        self.app, self.settings = app, settings
        self.stopping = threading.Event()
        self.wake = Wake(settings.direct_url)
        # No proxy from the environment: the address the guard checked is the one connected to.
        self.client = httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False, trust_env=False)
        self.pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="webhook")
        self.in_flight: dict[Future, str] = {}  # each delivery being sent, and its endpoint
        self.unrecorded: list[tuple[str, store.Outcome]] = []  # sent, not yet recorded (still leased)
        self.started = False  # the fan-out's position row made (on the first step the database answers)

    def deliver(self, claimed: store.Claimed) -> tuple[str, store.Outcome]:
        outcome = _outcome(claimed, self.settings, self.client)
        log.info("webhook %s to %s: %s", claimed.event_id, claimed.url, outcome.status_code or outcome.error)
        return claimed.id, outcome

    def step(self) -> bool:
        """Record what was sent, fan out a page and start what is due; True if there was anything to do."""
        recorded = len(self.unrecorded)
        with self.app.app_context():
            if not self.started:
                store.start_fan_out()
                self.started = True
            self.record()
            covered = store.fan_out(self.settings.page_size)
            claimed = store.claim_due(self.free(), self.settings.lease_seconds, self.settings.endpoint_concurrency,
                                      Counter(self.in_flight.values())) if self.free() > 0 else []
        for delivery in claimed:
            future = self.pool.submit(self.deliver, delivery)
            future.add_done_callback(lambda _future: self.wake.nudge())
            self.in_flight[future] = delivery.endpoint_id
        return bool(recorded or covered or claimed)

    def record(self) -> None:
        if self.unrecorded:
            store.finish(self.unrecorded, self.settings.disable_after_days)
            self.unrecorded = []

    def free(self) -> int:
        return self.settings.concurrency - len(self.in_flight)

    def idle(self) -> None:
        """Wait for new events, a finished delivery, SIGTERM or the poll interval, whichever comes first.

        Only a worker with room for more deliveries asks the writes to wake it (wake.py); a full one
        waits for a delivery to finish.
        """
        armed = None
        if self.free() > 0 and self.wake.listening():
            with self.app.app_context():
                armed = store.arm_wake(self.settings.poll_seconds * 2)
        woken = self.step() if armed is not None else False  # what came in before the writes knew to notify
        woken = woken or self.wake.wait(self.settings.poll_seconds)
        if armed is not None and woken:  # busy again: the writes need not notify (left alone, it lapses)
            with self.app.app_context():
                store.disarm_wake(armed)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.nudge()

    def run(self) -> None:
        """Until ``stopping``: work while there is work, otherwise wait in ``idle``."""
        try:
            while not self.stopping.is_set():
                self._collect({future for future in self.in_flight if future.done()})
                try:
                    if not self.step():
                        self.idle()
                except (OperationalError, InterfaceError) as error:  # the database is away: leases run out, are taken again
                    log.warning("webhook worker: the database is unavailable (%s); trying again",
                                type(error.orig).__name__)
                    self.stopping.wait(1.0)
        finally:
            self._finish()

    def _finish(self) -> None:
        """The deliveries in flight finish and are recorded; if the database is away, they are sent again later."""
        done, _ = wait(self.in_flight)
        self._collect(done)
        try:
            with self.app.app_context():
                self.record()
        except (OperationalError, InterfaceError):
            log.warning("webhook worker: %d attempts left unrecorded; their deliveries will be sent again",
                        len(self.unrecorded))
        self.pool.shutdown()
        self.client.close()
        self.wake.close()

    def _collect(self, done: set[Future]) -> None:
        for future in done:
            del self.in_flight[future]
            if future.exception() is not None:  # its lease runs out, and it is sent again
                log.error("a webhook delivery failed", exc_info=future.exception())
            else:
                self.unrecorded.append(future.result())


def run(app: Flask, settings: WorkerSettings) -> None:
    """Work until SIGTERM or SIGINT, for the ``webhooks work`` command."""
    worker = Worker(app, settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: worker.stop())
    worker.run()
