"""Scenario I's webhook endpoint: a threaded HTTP server in the benchmark's own process.

It verifies every delivery's signature with ``standardwebhooks`` (an HMAC of
the body: microseconds), answers 204 at once, and notes the wall-clock time
each ``webhook-id`` arrived, every time it arrives, and which transaction a
``transaction.created`` event is about. Connections are kept alive (HTTP/1.1),
as the worker's client keeps them, so a delivery costs no new connection.
A delivery that does not verify is answered 400 and counted.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.receiver import LoopbackReceiver


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._webhook: Webhook | None = None
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # webhook-id: time.time() of each arrival
        self.events_of: dict[str, str] = {}  # transaction id: the webhook-id of its transaction.created
        self.refused = 0  # deliveries whose signature did not verify
        self._http = LoopbackReceiver(lambda body, headers: self.receive(body, headers, time.time()))
        self.url = self._http.url

    def start(self, secret: str) -> Receiver:
        """Serve, verifying with the endpoint's secret (the registration answers it, before any delivery)."""
        self._webhook = Webhook(secret)
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def receive(self, body: bytes, headers: dict[str, str], arrived: float) -> int:
        """One delivery (``headers`` with lower-case names); returns the status to answer."""
        try:
            payload = self._webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError):
            with self._lock:
                self.refused += 1
            return 400
        webhook_id = headers["webhook-id"]
        with self._lock:
            self.arrivals[webhook_id].append(arrived)
            if payload.get("type") == "transaction.created":
                self.events_of[payload["data"]["id"]] = webhook_id
        return 204

    def received(self) -> int:
        """Deliveries accepted so far, repeats included."""
        with self._lock:
            return sum(len(times) for times in self.arrivals.values())

    def first_arrival(self, transaction_id: str) -> float | None:
        """When the transaction.created event of ``transaction_id`` first arrived, if it has."""
        with self._lock:
            webhook_id = self.events_of.get(transaction_id)
            return self.arrivals[webhook_id][0] if webhook_id is not None else None

    def duplicates(self) -> int:
        """Arrivals of a webhook-id after its first: at-least-once delivery allows them; they should be rare."""
        with self._lock:
            return sum(len(times) - 1 for times in self.arrivals.values())
