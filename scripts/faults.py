#!/usr/bin/env python3
"""Faults under load: crash the service and its database while callers retry, then audit the ledger.

Starts a durable embedded PostgreSQL (or uses ``--database-url``), migrates it,
serves the ledger under gunicorn and drives it from client processes that
behave like the real callers: the payment service (purchases keyed by the
provider's event id, settled later by webhook or completed at once), the
generation service (reserve credits, then settle or release them, or send
completed usage in batches, now and then atomic) and the billing page
(history and balance reads). The services call through their own Python
client (``clients/python``), which retries a request with the same
idempotency key on any transport error, timeout or 503; the billing page's
reads retry the same way by hand. A
webhook worker delivers every event to a receiver that verifies each
signature and answers a tenth of them with a 500.

Meanwhile it kills gunicorn workers and the webhook worker with SIGKILL,
stops PostgreSQL (fast and immediate shutdown) and starts it again, and drops
connections in the middle of requests. Afterwards it settles every outcome
the clients could not learn, checks the ledger against what the clients were
told and every event against what the receiver got, prints a Markdown report
and exits non-zero when any check fails.

    python scripts/faults.py --short                                        # about 20 s, run by `make test`
    python scripts/faults.py --duration 180 --report docs/reliability.md    # `make faults`
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import operator
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import requests
from transactions_client import Client as LedgerApi
from transactions_client import ProblemError, Transaction, TransactionsError, User

REPO_ROOT = Path(__file__).resolve().parent.parent
# The development tooling (devtools/, the embedded PostgreSQL) is not installed with the service: it sits beside it.
sys.path.insert(0, str(REPO_ROOT))
PROBLEM_JSON = "application/problem+json"
# Text that must never reach a client in an error body.
INTERNALS = ("Traceback", "psycopg2", "sqlalchemy", "OperationalError", "SELECT ", "INSERT ", "UPDATE ", "server closed")
RECOVERY_LIMIT_SECONDS = 5.0
# One attempt's connect and read timeouts; a retry follows either.
ATTEMPT_TIMEOUT = (2.0, 10.0)
# How long a client keeps retrying one request before leaving its outcome to the final reconciliation.
REQUEST_BUDGET_SECONDS = 30.0
REPORT_START = "<!-- faults-report:start -->"
REPORT_END = "<!-- faults-report:end -->"

PAYMENT, GENERATION, GROWTH, AUDITOR = "payment", "generation", "growth", "auditor"
SERVICE_CALLERS = {
    PAYMENT: ("payment-service", ("purchases:write", "users:write")),
    GENERATION: ("generation-service", ("usage:write",)),
    GROWTH: ("growth-service", ("credits:grant",)),
    AUDITOR: ("faults-auditor", ("transactions:read",)),
}
PRICE_LIST = {100: "1.99", 500: "9.99", 1000: "17.99"}

WORKER_KILLED = "gunicorn worker killed (SIGKILL)"
WEBHOOK_WORKER_KILLED = "webhook worker killed (SIGKILL) and started again"
# The receiver answers this share of deliveries with a 500, so that retries are part of every run.
RECEIVER_FAILURE_RATE = 0.1
# Quick retries, so that a run's deliveries finish in seconds after the load (each a retry of the same id).
WEBHOOK_SETTINGS = {
    "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "WEBHOOK_LEASE_SECONDS": "3",
    "WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.5,1,1,1,2,2,2,2,2,2", "WEBHOOK_TIMEOUT_SECONDS": "5",
}
DATABASE_FAST_RESTART = "PostgreSQL fast shutdown, then start"
DATABASE_IMMEDIATE_RESTART = "PostgreSQL immediate shutdown, then start"
DROPPED_AFTER_REQUEST = "connection dropped after a full request (outcome unknown)"
DROPPED_MID_REQUEST = "connection dropped half-way through a request"
FAULT_KINDS = (
    WORKER_KILLED, DATABASE_FAST_RESTART, DATABASE_IMMEDIATE_RESTART, DROPPED_AFTER_REQUEST, DROPPED_MID_REQUEST,
    WEBHOOK_WORKER_KILLED,
)
# The order faults come round in; a run repeats it as often as its duration allows.
FAULT_ROTATION = (
    "kill_worker", "drop_connections", "restart_database_fast", "kill_webhook_worker", "kill_worker", "drop_connections",
    "restart_database_immediate",
)
SECONDS_PER_FAULT = 5.0

PRESETS = {
    "long": {"duration": 180.0, "clients": 6, "workers": 3, "outage": 3.0},
    "short": {"duration": 12.0, "clients": 4, "workers": 3, "outage": 1.5},
}

# (scenario, weight) for what a client does next.
SCENARIOS = (
    ("purchase_settled_by_webhook", 22),
    ("purchase_completed_at_once", 13),
    ("generation", 35),
    ("billing_page_read", 25),
    ("new_customer", 5),
    ("promotional_grant", 5),
    ("refund", 4),
    ("reversal", 4),
    ("usage_batch", 10),
)
# The callers' client: retries (the first after up to 50 ms, doubling to 2 s, with full jitter) before
# the outcome is left to the final reconciliation, as the billing page's reads give up after REQUEST_BUDGET_SECONDS.
CLIENT_RETRIES = 18
CLIENT_BACKOFF = (0.05, 2.0)
# What a create may be refused with, by type, as the rules allow: nothing else is expected.
EXPECTED_REFUSALS = {
    "usage": {"insufficient_credits"},
    "refund": {"refund_exceeds_remaining", "refund_exceeds_amount"},
    "reversal": {"reversal_exceeds_usage"},
}


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- what callers see


def problem_code(response: requests.Response) -> str | None:
    if not response.headers.get("Content-Type", "").startswith(PROBLEM_JSON):
        return None
    try:
        return response.json().get("code")
    except ValueError:
        return None


def response_label(response: requests.Response) -> str:
    code = problem_code(response)
    return f"{response.status_code} {code}" if code else str(response.status_code)


def is_retryable(response: requests.Response) -> bool:
    return response.status_code >= 500 or (
        response.status_code == 409 and problem_code(response) == "idempotency_key_in_use"
    )


@dataclass
class Tally:
    """What one process saw on the wire."""

    requests: int = 0
    retries: int = 0
    given_up: int = 0
    responses: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)
    # 5xx other than a well-formed 503 database_unavailable: the first few, and how many.
    bad_5xx: list = field(default_factory=list)
    bad_5xx_count: int = 0
    # Error bodies that carry driver, SQL or traceback text.
    leaks: list = field(default_factory=list)
    leak_count: int = 0
    # Answers a caller could not have expected (a 404 for its own transaction, a 422 on a retry, ...).
    unexpected: list = field(default_factory=list)
    unexpected_count: int = 0

    def record(self, method: str, path: str, response: requests.Response) -> None:
        self.responses[response_label(response)] += 1
        if response.status_code >= 400 and any(marker in response.text for marker in INTERNALS):
            self.leak_count += 1
            if len(self.leaks) < 10:
                self.leaks.append({"request": f"{method} {path.split('?')[0]}", "body": response.text[:300]})
        if response.status_code < 500:
            return
        well_formed = (
            response.status_code == 503
            and response.headers.get("Content-Type", "").startswith(PROBLEM_JSON)
            and problem_code(response) == "database_unavailable"
            and "Retry-After" in response.headers
        )
        if not well_formed:
            self.bad_5xx_count += 1
            if len(self.bad_5xx) < 10:
                self.bad_5xx.append(
                    {
                        "request": f"{method} {path.split('?')[0]}",
                        "status": response.status_code,
                        "content_type": response.headers.get("Content-Type"),
                        "body": response.text[:300],
                    }
                )

    def record_unexpected(self, what: str, response: requests.Response) -> None:
        self.record_unexpected_answer(what, response_label(response), response.text)

    def record_unexpected_answer(self, what: str, label: str, body: str) -> None:
        self.unexpected_count += 1
        if len(self.unexpected) < 10:
            self.unexpected.append({"request": what, "response": label, "body": body[:300]})

    def merge(self, other: dict[str, Any]) -> None:
        self.requests += other["requests"]
        self.retries += other["retries"]
        self.given_up += other["given_up"]
        self.responses.update(other["responses"])
        self.transport_errors.update(other["transport_errors"])
        self.bad_5xx += other["bad_5xx"][: max(0, 10 - len(self.bad_5xx))]
        self.bad_5xx_count += other["bad_5xx_count"]
        self.leaks += other["leaks"][: max(0, 10 - len(self.leaks))]
        self.leak_count += other["leak_count"]
        self.unexpected += other["unexpected"][: max(0, 10 - len(self.unexpected))]
        self.unexpected_count += other["unexpected_count"]


class RetryingCaller:
    """Sends one request until it gets a definite answer, as the real callers do.

    Every attempt carries the same Idempotency-Key. Transport errors, timeouts,
    5xx and 409 ``idempotency_key_in_use`` are retried after a short capped
    backoff (at least the server's ``Retry-After``), within a time budget;
    past it the answer is None and the outcome is unknown.
    """

    def __init__(self, base_url: str, tally: Tally, rng: random.Random, budget: float = REQUEST_BUDGET_SECONDS) -> None:
        self.base_url = base_url
        self.tally = tally
        self.rng = rng
        self.budget = budget
        self.http = requests.Session()

    def send(
        self,
        method: str,
        path: str,
        token: str,
        *,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response | None:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        deadline = time.monotonic() + self.budget
        attempt = 0
        while True:
            self.tally.requests += 1
            self.tally.retries += attempt > 0
            retry_after = 0.0
            try:
                response = self.http.request(
                    method, self.base_url + path, headers=headers, json=body, params=params, timeout=ATTEMPT_TIMEOUT
                )
            except requests.RequestException as error:
                self.tally.transport_errors[type(error).__name__] += 1
            else:
                self.tally.record(method, path, response)
                if not is_retryable(response):
                    return response
                retry_after = _seconds(response.headers.get("Retry-After"))
            delay = max(min(1.0, 0.05 * 2**attempt) * self.rng.uniform(0.5, 1.5), min(retry_after, 2.0))
            if time.monotonic() + delay > deadline:
                self.tally.given_up += 1
                return None
            time.sleep(delay)
            attempt += 1


class TallyingTransport(httpx.BaseTransport):
    """Every attempt the callers' client makes, counted as ``Tally`` counts what a caller sees.

    The client sends every attempt of one call with the same ``X-Request-ID``:
    an attempt with the id of the one before it is a retry.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.inner = httpx.HTTPTransport()
        self.last_call: str | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = request.headers.get("X-Request-ID")
        self.tally.requests += 1
        self.tally.retries += call is not None and call == self.last_call
        self.last_call = call
        try:
            response = self.inner.handle_request(request)
            response.read()
        except httpx.TransportError as error:
            self.tally.transport_errors[type(error).__name__] += 1
            raise
        self.tally.record(request.method, request.url.path, response)
        return response

    def close(self) -> None:
        self.inner.close()


def callers_clients(base_url: str, tokens: dict[str, str], tally: Tally) -> dict[str, LedgerApi]:
    """The payment, generation and growth services, each through the client they import, with its own key,
    every attempt counted in ``tally``."""
    http = httpx.Client(transport=TallyingTransport(tally))
    timeout = httpx.Timeout(ATTEMPT_TIMEOUT[1], connect=ATTEMPT_TIMEOUT[0])
    backoff, max_backoff = CLIENT_BACKOFF
    return {caller: LedgerApi(base_url, tokens[caller], http_client=http, timeout=timeout, retries=CLIENT_RETRIES,
                              backoff=backoff, max_backoff=max_backoff)
            for caller in (PAYMENT, GENERATION, GROWTH)}


# What a caller learned from a write: the transaction, the problem it was refused with, or nothing.
Answer = Transaction | ProblemError | None


def ask(tally: Tally, call: Any) -> Any:
    """The answer of a call through the callers' client; None when its retries ran out without one (a 503
    or a key in use to the last, no answer at all) or when it met a 500: what it did is unknown."""
    try:
        return call()
    except ProblemError as problem:
        if problem.status >= 500 or problem.code == "idempotency_key_in_use":
            tally.given_up += problem.status != 500
            return None
        return problem
    except TransactionsError:
        tally.given_up += 1
        return None


def _seconds(header: str | None) -> float:
    try:
        return float(header or 0)
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------- the callers


@dataclass
class Outcomes:
    """What the callers were told, and what they never learned."""

    created: list = field(default_factory=list)  # acknowledged 201s: id, key, kind, user_id, credits, status, replayed
    settled: list = field(default_factory=list)  # acknowledged PATCHes: id, status
    registered: list = field(default_factory=list)  # acknowledged PUT /api/users: user ids
    refused: int = 0  # creates refused as the rules say (EXPECTED_REFUSALS; they write nothing, by design)
    batches: int = 0  # batches of usage answered (their items are among the creates)
    batch_items: int = 0
    atomic_refused: int = 0  # atomic batches refused whole (an item did not fit; none was written)
    reads: int = 0
    unknown_creates: list = field(default_factory=list)  # caller, key, body
    unknown_settles: list = field(default_factory=list)  # caller, id, status
    unknown_registrations: list = field(default_factory=list)


@dataclass(frozen=True)
class ClientPlan:
    index: int
    base_url: str
    run_id: str
    seed: int
    tokens: dict[str, str]
    # The billing page reads with the signed-in user's own token.
    user_tokens: dict[str, str]
    results_path: str


class LedgerClient:
    """One client process: a mix of the three callers' flows against shared customers."""

    def __init__(self, plan: ClientPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.tally = Tally()
        self.outcomes = Outcomes()
        self.http = RetryingCaller(plan.base_url, self.tally, self.rng)  # the billing page's reads
        self.services = callers_clients(plan.base_url, plan.tokens, self.tally)
        self.customers = list(plan.user_tokens)
        self.serial = itertools.count()
        # This client's acknowledged completed purchases and usage: what refunds and reversals give back.
        self.paid: list[dict[str, Any]] = []
        self.spent: list[dict[str, Any]] = []

    def next_key(self, prefix: str) -> str:
        return idempotency_key(prefix, self.plan.run_id, f"c{self.plan.index}", next(self.serial))

    def run(self, stop: Any) -> None:
        names, weights = zip(*SCENARIOS)
        while not stop.is_set():
            getattr(self, self.rng.choices(names, weights)[0])()
        Path(self.plan.results_path).write_text(json.dumps({"tally": vars(self.tally), "outcomes": vars(self.outcomes)}))

    def create(self, caller: str, body: dict[str, Any], key: str) -> dict[str, Any] | None:
        answer = ask(self.tally, lambda: self.services[caller].create({**body, "idempotency_key": key}))
        return record_answer(self.outcomes, self.tally, caller, body, key, answer)

    def settle(self, caller: str, created: dict[str, Any], status: str) -> bool:
        """Whether the settlement was acknowledged."""
        answer = ask(self.tally, lambda: self.services[caller].settle(created["id"], status))
        return record_settlement(self.outcomes, self.tally, caller, created["id"], status, answer)

    def usage_batch(self) -> None:
        """The generation service sends the usage of a few finished jobs in one call (one in five all or
        none), for customers picked at random: each item is answered as a single write would be."""
        items = [usage(self.rng, self.rng.choice(self.customers), self.next_key("job"), "completed")
                 for _ in range(self.rng.randint(2, 20))]
        atomic = self.rng.random() < 0.2
        sent = [{**body, "idempotency_key": key} for body, key in items]
        answer = ask(self.tally, lambda: self.services[GENERATION].record_batch(sent, atomic=atomic))
        self.outcomes.batches += answer is not None
        self.outcomes.batch_items += len(items) if answer is not None else 0
        if isinstance(answer, list):
            for (body, key), result in zip(items, answer):
                record_answer(self.outcomes, self.tally, GENERATION, body, key, result.transaction or result.problem)
        elif answer is None:  # nothing learned: each item is reconciled on its own, as a single write with its key
            for body, key in items:
                record_answer(self.outcomes, self.tally, GENERATION, body, key, None)
        elif atomic and answer.code in EXPECTED_REFUSALS["usage"]:
            self.outcomes.refused += len(items)  # one item did not fit: none was written
            self.outcomes.atomic_refused += 1
        else:
            self.tally.record_unexpected_answer(f"POST /api/transactions/batch (atomic: {atomic})", label(answer),
                                                str(answer))

    def purchase_settled_by_webhook(self) -> None:
        created = self.create(PAYMENT, *purchase(self.rng, self.rng.choice(self.customers), "pending", self.next_key("evt")))
        if created is not None:
            status = "completed" if self.rng.random() < 0.9 else "failed"
            if self.settle(PAYMENT, created, status) and status == "completed":
                self.paid.append(created)

    def purchase_completed_at_once(self) -> None:
        created = self.create(PAYMENT, *purchase(self.rng, self.rng.choice(self.customers), "completed", self.next_key("evt")))
        if created is not None:
            self.paid.append(created)

    def generation(self) -> None:
        created = self.create(GENERATION, *usage(self.rng, self.rng.choice(self.customers), self.next_key("job")))
        if created is not None:
            status = "completed" if self.rng.random() < 0.8 else "failed"
            if self.settle(GENERATION, created, status) and status == "completed":
                self.spent.append(created)

    def refund(self) -> None:
        """The payment service refunds part of a purchase (or loses a chargeback): refused beyond what is left."""
        if self.paid:
            self.create(PAYMENT, *refund(self.rng, self.rng.choice(self.paid), self.next_key("evt")))

    def reversal(self) -> None:
        """A charged generation failed after all: some or all of its credits go back to the lots it used."""
        if self.spent:
            self.create(GENERATION, *reversal(self.rng, self.rng.choice(self.spent), self.next_key("job")))

    def billing_page_read(self) -> None:
        user_id = self.rng.choice(self.customers)
        token = self.plan.user_tokens.get(user_id)
        # A customer registered during the run has no user token here; read it as the auditor service.
        params = {} if token else {"user_id": user_id}
        token = token or self.plan.tokens[AUDITOR]
        for path, extra in (("/api/transactions", {"limit": "20"}), ("/api/balance", {})):
            response = self.http.send("GET", path, token, params={**params, **extra})
            if response is not None and response.status_code != 200:
                self.tally.record_unexpected(f"GET {path}", response)
            self.outcomes.reads += response is not None

    def promotional_grant(self) -> None:
        """Free credits that expire after the run (so that every balance stays what the writes add up to),
        spent before paid ones: they bring a second lot into every spend that follows."""
        self.create(GROWTH, *grant(self.rng, self.rng.choice(self.customers), self.next_key("gift")))

    def new_customer(self) -> None:
        user_id = str(uuid.uuid4())
        answer = ask(self.tally, lambda: self.services[PAYMENT].register_user(user_id))
        if record_registration(self.outcomes, self.tally, user_id, answer):
            self.customers.append(user_id)
            self.create(PAYMENT, *purchase(self.rng, user_id, "completed", self.next_key("evt")))


def run_client(plan: ClientPlan, stop: Any) -> None:
    # Ctrl-C reaches the whole process group; the harness stops its clients itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    LedgerClient(plan).run(stop)


def idempotency_key(prefix: str, run_id: str, source: str, serial: int) -> str:
    """A payment event id (``evt``) or a generation job id (``job``), unique to this run."""
    return f"{prefix}_{run_id}-{source}-{serial}"


def purchase(
    rng: random.Random, user_id: str, status: str, key: str, credits: int | None = None
) -> tuple[dict[str, Any], str]:
    credits = credits or rng.choice(list(PRICE_LIST))
    # The key in the description lets the audit find every row a key produced, independently of idempotency_keys.
    body = {
        "user_id": user_id,
        "type": "purchase",
        "amount": PRICE_LIST[credits],
        "credits": credits,
        "description": f"{credits} credits [{key}]",
        "status": status,
    }
    return body, key


def grant(rng: random.Random, user_id: str, key: str) -> tuple[dict[str, Any], str]:
    credits = rng.choice((20, 50, 100))
    body = {
        "user_id": user_id,
        "type": "grant",
        "credits": credits,
        "description": f"Welcome bonus: {credits} credits [{key}]",
        "status": "completed",
        "expires_in": 86_400,
        "priority": rng.choice((10, 50)),
    }
    return body, key


def refund(rng: random.Random, paid: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    credits = rng.randint(1, paid["credits"])
    body = {
        "user_id": paid["user_id"],
        "type": "refund",
        "refunds": paid["id"],
        "amount": rng.choice(("0.00", "0.99", "1.50")),
        "credits": -credits,
        "description": f"Refund: {credits} credits [{key}]",
        "status": "completed",
    }
    return body, key


def reversal(rng: random.Random, spent: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    credits = rng.randint(1, -spent["credits"])
    body = {
        "user_id": spent["user_id"],
        "type": "reversal",
        "reverses": spent["id"],
        "credits": credits,
        "description": f"Generation failed: {credits} credits back [{key}]",
        "status": "completed",
    }
    return body, key


# A usage, by status: a hold before an image generation, or the completed usage of a tool call (in batches).
USAGE = {"pending": ("Image generation", 5, 120), "completed": ("Tool call", 1, 15)}


def usage(rng: random.Random, user_id: str, key: str, status: str = "pending") -> tuple[dict[str, Any], str]:
    what, fewest, most = USAGE[status]
    body = {
        "user_id": user_id,
        "type": "usage",
        "amount": "0",
        "credits": -rng.randint(fewest, most),
        "description": f"{what} [{key}]",
        "status": status,
    }
    return body, key


def key_of(description: str) -> str | None:
    if not description.endswith("]") or "[" not in description:
        return None
    return description.rsplit("[", 1)[1][:-1]


def label(answer: Transaction | ProblemError) -> str:
    """An answer as ``response_label`` shows a response: its status, and its problem's code."""
    return f"{answer.status} {answer.code}" if isinstance(answer, ProblemError) else f"200 {answer.status}"


def record_answer(
    outcomes: Outcomes, tally: Tally, caller: str, body: dict[str, Any], key: str, answer: Answer
) -> dict[str, Any] | None:
    """What the callers' client learned of a create: acknowledged, refused as the rules allow, or unknown."""
    if answer is None:
        outcomes.unknown_creates.append({"caller": caller, "key": key, "body": body})
        return None
    if isinstance(answer, ProblemError):
        if answer.code in EXPECTED_REFUSALS.get(body["type"], ()):
            outcomes.refused += 1
        else:
            tally.record_unexpected_answer(f"POST /api/transactions ({body['type']}, {body['status']})",
                                           label(answer), str(answer))
        return None
    return acknowledged(outcomes, body, key, str(answer.id), answer.replayed)


def record_settlement(outcomes: Outcomes, tally: Tally, caller: str, transaction_id: str, status: str,
                      answer: Transaction | ProblemError | None) -> bool:
    """What the callers' client learned of a settlement; whether it was acknowledged."""
    if answer is None:
        outcomes.unknown_settles.append({"caller": caller, "id": transaction_id, "status": status})
    elif isinstance(answer, Transaction) and answer.status == status:
        outcomes.settled.append({"id": transaction_id, "status": status})
        return True
    else:
        tally.record_unexpected_answer(f"PATCH /api/transactions/{{id}} -> {status}", label(answer), str(answer))
    return False


def record_registration(outcomes: Outcomes, tally: Tally, user_id: str, answer: User | ProblemError | None) -> bool:
    """What the callers' client learned of a registration; whether it was acknowledged."""
    if answer is None:
        outcomes.unknown_registrations.append(user_id)
    elif isinstance(answer, ProblemError):
        tally.record_unexpected_answer("PUT /api/users/{id}", label(answer), str(answer))
    else:
        outcomes.registered.append(user_id)
        return True
    return False


def acknowledged(outcomes: Outcomes, body: dict[str, Any], key: str, transaction_id: str,
                 replayed: bool) -> dict[str, Any]:
    created = {"id": transaction_id, "key": key, "kind": body["type"], "user_id": body["user_id"],
               "credits": body["credits"], "status": body["status"], "replayed": replayed}
    outcomes.created.append(created)
    return created


# --------------------------------------------------------------------------- the processes under test


class LedgerService:
    """The service under gunicorn, as production runs it, on 127.0.0.1."""

    def __init__(self, workdir: Path, database_url: str, secret: str, workers: int) -> None:
        self.workers = workers
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gunicorn.log"
        env = {
            **_without_service_settings(os.environ), "DATABASE_URL": database_url, "JWT_SECRET_KEY": secret,
            # Every simulated customer shares 127.0.0.1: the per-address limit would measure itself, not the ledger.
            "RATELIMIT_PER_ADDRESS": "1000000 per minute",
            **WEBHOOK_SETTINGS,  # the run's receiver is on this machine, over http
        }
        with open(self.log_path, "wb") as log_file:
            # A session of its own, so that Ctrl-C reaches the harness only and cleanup stops things in order.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", "wsgi:app"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass  # the master has bound the port before a worker can answer
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)

    def worker_pids(self) -> set[int]:
        """The master's live children (a killed worker not yet reaped is a zombie and does not count)."""
        workers = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if int(ppid) == self.process.pid and state != "Z":
                workers.add(int(stat.parent.name))
        return workers

    def busy_workers(self) -> set[int]:
        """Workers holding an accepted client connection right now, i.e. in the middle of a request."""
        established = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[3] == "01":
                established.add(f"socket:[{fields[9]}]")
        busy = set()
        for pid in self.worker_pids():
            try:
                if any(os.readlink(fd) in established for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    busy.add(pid)
            except OSError:
                continue  # the worker exited while we looked
        return busy

    def errors_logged(self) -> list[str]:
        """The last line of every traceback in the service's log: what a 500 was."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        found = []
        for index, line in enumerate(lines):
            if line.startswith("Traceback"):
                tail = next((later for later in lines[index + 1:] if later and not later.startswith((" ", "\t"))), "")
                found.append(tail[:200])
        return found

    def stop(self) -> None:
        workers = self.worker_pids()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # Workers that outlived their master (it hung, or was killed) are ours to end.
        for pid in workers:
            try:
                if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


class WebhookReceiver:
    """The run's webhook endpoint: verifies every delivery's signature, counts each webhook-id it accepts,
    and answers a share of them with a 500, so that they come again."""

    def __init__(self, rng: random.Random) -> None:
        from devtools.receiver import LoopbackReceiver

        self.accepted: Counter = Counter()
        self.refused_signatures = 0
        self.refusals: list[str] = []  # why the first few were refused
        self.failed_on_purpose = 0
        self.secret = ""
        self._rng, self._lock = rng, threading.Lock()
        self._http = LoopbackReceiver(self._answer).start()
        self.url = self._http.url

    def _answer(self, body: bytes, headers: dict[str, str]) -> int:
        from standardwebhooks import Webhook

        with self._lock:
            try:
                Webhook(self.secret).verify(body, headers)
            except Exception as refused:
                self.refused_signatures += 1
                if len(self.refusals) < 3:
                    self.refusals.append(f"{type(refused).__name__}: {refused}"[:200])
                return 400
            if self._rng.random() < RECEIVER_FAILURE_RATE:
                self.failed_on_purpose += 1
                return 500
            self.accepted[headers["webhook-id"]] += 1
            return 204

    def stop(self) -> None:
        self._http.stop()


class WebhookWorker:
    """``flask webhooks work`` as production runs it beside gunicorn; the fault run kills it now and then."""

    def __init__(self, workdir: Path, database_url: str, secret: str) -> None:
        self.log_path = workdir / "webhooks.log"
        self.env = {**_without_service_settings(os.environ), "DATABASE_URL": database_url, "JWT_SECRET_KEY": secret,
                    **WEBHOOK_SETTINGS}
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "wsgi", "webhooks", "work"], cwd=REPO_ROOT, env=self.env,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill_and_start(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_service_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus a developer's service settings, which would override the run's own."""
    return {name: value for name, value in env.items() if not name.startswith(("JWT_", "DATABASE_", "CORS_", "RATELIMIT_"))}


@dataclass
class Outage:
    mode: str
    really_down: bool = False
    down_seconds: float = 0.0
    while_down: Counter = field(default_factory=Counter)
    recovered_after: float | None = None
    while_recovering: Counter = field(default_factory=Counter)


@dataclass
class Faults:
    injected: Counter = field(default_factory=Counter)
    killed_mid_request: int = 0
    respawn_seconds: list = field(default_factory=list)
    workers_not_replaced: int = 0
    outages: list = field(default_factory=list)
    # Writes sent on a connection dropped after the full request: the harness must find out what happened.
    unknown_creates: list = field(default_factory=list)
    # Requests cut half-way through the body: they must write nothing.
    half_sent_keys: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


class FaultInjector:
    """Injects the faults on a schedule, from the harness process, and measures how the service takes them."""

    def __init__(self, run: "FaultRun", rng: random.Random) -> None:
        self.run = run
        self.rng = rng
        self.faults = Faults()
        self.serial = itertools.count()

    def probe(self) -> str:
        """One DB-backed read, not retried: what the service answers right now."""
        self.run.tally.requests += 1
        try:
            response = requests.get(
                self.run.service.base_url + "/api/balance",
                params={"user_id": self.run.customers[0]},
                headers={"Authorization": f"Bearer {self.run.tokens[AUDITOR]}"},
                timeout=(1.0, 3.0),
            )
        except requests.RequestException as error:
            self.run.tally.transport_errors[type(error).__name__] += 1
            return type(error).__name__
        self.run.tally.record("GET", "/api/balance", response)
        return response_label(response)

    def kill_worker(self) -> None:
        service = self.run.service
        # Prefer a worker in the middle of a request: that is the crash that can lose a response.
        look_until = time.monotonic() + 1.0
        while not (candidates := service.busy_workers()) and time.monotonic() < look_until:
            time.sleep(0.005)
        mid_request = bool(candidates)
        candidates = candidates or service.worker_pids()
        if not candidates:
            self.faults.skipped.append("no gunicorn worker to kill")
            return
        victim = self.rng.choice(sorted(candidates))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        self.faults.injected[WORKER_KILLED] += 1
        self.faults.killed_mid_request += mid_request
        log(f"killed gunicorn worker {victim}{' in the middle of a request' if mid_request else ''}")
        while time.monotonic() - killed_at < 20:
            current = service.worker_pids()
            if victim not in current and len(current) >= service.workers:
                self.faults.respawn_seconds.append(time.monotonic() - killed_at)
                return
            time.sleep(0.05)
        self.faults.workers_not_replaced += 1

    def kill_webhook_worker(self) -> None:
        self.run.webhook_worker.kill_and_start()
        self.faults.injected[WEBHOOK_WORKER_KILLED] += 1
        log("killed the webhook worker and started another")

    def drop_connections(self) -> None:
        customer = self.rng.choice(self.run.customers)
        serial = next(self.serial)
        bought, key = purchase(self.rng, customer, "completed", idempotency_key("evt", self.run.run_id, "dropped", serial))
        # Whether or not the request got through, its outcome is unknown to the caller and reconciled later.
        self.faults.unknown_creates.append({"caller": PAYMENT, "key": key, "body": bought})
        self.faults.injected[DROPPED_AFTER_REQUEST] += self.send_raw(PAYMENT, bought, key, linger=False)
        reserved, key = usage(self.rng, customer, idempotency_key("job", self.run.run_id, "dropped", serial))
        self.faults.unknown_creates.append({"caller": GENERATION, "key": key, "body": reserved})
        # Reset the connection while the worker is likely inside the request, rather than after it.
        self.faults.injected[DROPPED_AFTER_REQUEST] += self.send_raw(
            GENERATION, reserved, key, linger=True, pause=self.rng.uniform(0.0, 0.03)
        )
        cut, key = purchase(self.rng, customer, "completed", idempotency_key("evt", self.run.run_id, "half", serial))
        self.faults.half_sent_keys.append(key)
        self.faults.injected[DROPPED_MID_REQUEST] += self.send_raw(PAYMENT, cut, key, linger=True, fraction=0.5)
        log("dropped connections: two after a full request, one half-way")

    def send_raw(
        self, caller: str, body: dict[str, Any], key: str, *, linger: bool, pause: float = 0.0, fraction: float = 1.0
    ) -> bool:
        """Send a POST on a bare socket and close it without reading the answer (with RST when ``linger``)."""
        payload = json.dumps(body).encode()
        head = (
            f"POST /api/transactions HTTP/1.1\r\nHost: 127.0.0.1:{self.run.service.port}\r\n"
            f"Authorization: Bearer {self.run.tokens[caller]}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(("127.0.0.1", self.run.service.port), timeout=5) as sock:
                sock.sendall(head + payload[: int(len(payload) * fraction)])
                time.sleep(pause)
                if linger:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as error:
            self.faults.skipped.append(f"raw connection failed: {type(error).__name__}")
            return False
        return True

    def restart_database_fast(self) -> None:
        self.restart_database("fast", DATABASE_FAST_RESTART)

    def restart_database_immediate(self) -> None:
        self.restart_database("immediate", DATABASE_IMMEDIATE_RESTART)

    def restart_database(self, mode: str, kind: str) -> None:
        postgres = self.run.postgres
        if postgres is None:
            self.faults.skipped.append(f"{kind}: the database is external (--database-url)")
            return
        outage = Outage(mode)
        self.faults.outages.append(outage)
        postgres.stop(mode)
        stopped_at = time.monotonic()
        outage.really_down = not postgres.is_running()
        self.faults.injected[kind] += 1
        log(f"PostgreSQL stopped ({mode} shutdown)")
        while time.monotonic() - stopped_at < self.run.args.outage:
            outage.while_down[self.probe()] += 1
            time.sleep(0.1)
        outage.down_seconds = time.monotonic() - stopped_at
        postgres.start()
        started_at = time.monotonic()
        while time.monotonic() - started_at < 30:
            answer = self.probe()
            outage.while_recovering[answer] += 1
            if answer.startswith("2"):
                outage.recovered_after = time.monotonic() - started_at
                break
            time.sleep(0.05)
        recovery = "never" if outage.recovered_after is None else f"{outage.recovered_after:.2f} s"
        log(f"PostgreSQL started again; the service answered 2xx after {recovery}")


def fault_schedule(duration: float) -> list[tuple[float, str]]:
    """When each fault fires, in seconds from the start of the load: the rotation, spread evenly."""
    count = max(len(FAULT_ROTATION), round(duration / SECONDS_PER_FAULT))
    first, last = 1.5, max(1.5, duration - 4.0)
    step = (last - first) / (count - 1)
    return [(first + index * step, FAULT_ROTATION[index % len(FAULT_ROTATION)]) for index in range(count)]


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class LedgerState:
    users: list[str]
    rows: list[Any]
    records: list[Any]
    balances: dict[str, Any]
    known_users: set[str]
    # Users whose events disagree with their ledger rows (EVENTS_DISAGREE), and how many events there are.
    events_disagree: list[str]
    events: int


# The users whose events do not say what their ledger rows do: a row without exactly one
# transaction.created, a row whose latest event shows another status than it has, a row updated
# twice, an expiration without its lot.expired, or sequence numbers that are not 1, 2, 3, ... up to
# the balance row's count, each once.
EVENTS_DISAGREE = (
    "WITH mine AS (SELECT * FROM ledger_events WHERE user_id = ANY(CAST(:users AS uuid[]))),"
    " per_row AS (SELECT t.user_id, t.status::text AS status,"
    "   count(*) FILTER (WHERE e.type = 'transaction.created') AS created,"
    "   count(*) FILTER (WHERE e.type = 'transaction.updated') AS updated,"
    "   (array_agg(e.data->>'status' ORDER BY e.sequence DESC))[1] AS latest"
    "   FROM user_transactions AS t LEFT JOIN mine AS e ON e.user_id = t.user_id AND e.data->>'id' = t.id::text"
    "   AND e.type LIKE 'transaction.%' WHERE t.user_id = ANY(CAST(:users AS uuid[])) GROUP BY t.id, t.user_id, t.status),"
    " per_user AS (SELECT user_id, count(*) AS events, count(DISTINCT sequence) AS distinct_numbers,"
    "   max(sequence) AS largest, count(*) FILTER (WHERE type = 'lot.expired') AS lots_expired FROM mine GROUP BY user_id)"
    " SELECT DISTINCT user_id::text FROM per_row WHERE created <> 1 OR updated > 1 OR latest IS DISTINCT FROM status"
    " UNION SELECT b.user_id::text FROM user_balances AS b LEFT JOIN per_user AS u USING (user_id)"
    " WHERE b.user_id = ANY(CAST(:users AS uuid[])) AND (coalesce(u.events, 0) <> b.event_sequence"
    "   OR coalesce(u.distinct_numbers, 0) <> b.event_sequence OR coalesce(u.largest, 0) <> b.event_sequence"
    "   OR coalesce(u.lots_expired, 0) <> (SELECT count(*) FROM user_transactions"
    "     WHERE user_id = b.user_id AND type = 'expiration'))"
)


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not applicable to this run
    detail: str


class FaultRun:
    """One run: start everything, load and break it, reconcile, audit, report, and clean up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(4)
        self.workdir = Path(tempfile.mkdtemp(prefix="ledger-faults-"))
        self.postgres = None
        self.service: LedgerService | None = None
        self.clients: list[multiprocessing.Process] = []
        self.stop_load = None
        self.tally = Tally()
        self.outcomes = Outcomes()
        self.customers: list[str] = []
        self.tokens: dict[str, str] = {}
        self.reconciled: Counter = Counter()
        self.keep_workdir = False
        self.receiver: WebhookReceiver | None = None
        self.webhook_worker: WebhookWorker | None = None

    # ---- setup

    def start_database(self) -> str:
        if self.args.database_url:
            return self.args.database_url
        from devtools.devdb import EmbeddedPostgres

        # Default settings (fsync, synchronous commit, full-page writes): the run kills this server.
        self.postgres = EmbeddedPostgres(self.workdir / "postgres").start()
        return self.postgres.ensure_database("ledger")

    def prepare_ledger(self, database_url: str, secret: str) -> dict[str, str]:
        """Migrate the database, make the services' API keys and sign the customers' tokens (one each)."""
        from flask_migrate import upgrade

        from transactions_service import api_keys, create_app
        from transactions_service.auth import issue_token
        from transactions_service.extensions import db

        app = create_app({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret})
        lifetime = int(self.args.duration) + 3600
        with app.app_context():
            upgrade()
            db.engine.dispose()
            self.tokens = {
                caller: api_keys.create(name, list(scopes)).key for caller, (name, scopes) in SERVICE_CALLERS.items()
            }
            self.webhooks_key = api_keys.create("webhooks-admin", ["webhooks:manage"]).key
            self.customers = [str(uuid.uuid4()) for _ in range(2 * self.args.clients)]
            return {user_id: issue_token(user_id, expires_in=lifetime) for user_id in self.customers}

    def start_webhooks(self, rng: random.Random, database_url: str, secret: str) -> None:
        """A receiver subscribed to every event type, and a webhook worker beside gunicorn."""
        from transactions_service.ledger.models import EVENT_TYPES

        self.receiver = WebhookReceiver(random.Random(rng.randrange(2**32)))
        response = requests.post(
            f"{self.service.base_url}/api/webhook-endpoints", timeout=10,
            headers={"Authorization": f"Bearer {self.webhooks_key}"},
            json={"url": self.receiver.url, "event_types": list(EVENT_TYPES), "description": "the fault run"},
        )
        response.raise_for_status()
        self.receiver.secret = response.json()["secret"]
        self.webhook_worker = WebhookWorker(self.workdir, database_url, secret)

    def services(self) -> dict[str, LedgerApi]:
        """The callers' clients, as the client processes make them, counted in this process's tally."""
        return callers_clients(self.service.base_url, self.tokens, self.tally)

    def open_accounts(self, rng: random.Random) -> None:
        """Register the shared customers and give each a first completed purchase."""
        payment = self.services()[PAYMENT]
        for serial, user_id in enumerate(self.customers):
            answer = ask(self.tally, lambda: payment.register_user(user_id))
            if not record_registration(self.outcomes, self.tally, user_id, answer):
                raise RuntimeError(f"could not register customer {user_id}")
            body, key = purchase(rng, user_id, "completed", idempotency_key("evt", self.run_id, "opening", serial), 1000)
            answer = ask(self.tally, lambda: payment.create({**body, "idempotency_key": key}))
            if record_answer(self.outcomes, self.tally, PAYMENT, body, key, answer) is None:
                raise RuntimeError(f"could not fund customer {user_id}")

    # ---- the run

    def execute(self) -> int:
        args = self.args
        rng = random.Random(args.seed)
        began = time.monotonic()
        secret = secrets.token_hex(32)
        database_url = self.start_database()
        user_tokens = self.prepare_ledger(database_url, secret)
        self.service = LedgerService(self.workdir, database_url, secret, args.workers)
        self.service.wait_until_ready()
        master_pid = self.service.process.pid
        self.start_webhooks(rng, database_url, secret)
        self.open_accounts(rng)
        log(f"{args.workers} gunicorn workers on {self.service.base_url}; {args.clients} clients for {args.duration:.0f} s")

        context = multiprocessing.get_context("spawn")
        self.stop_load = context.Event()
        for index in range(args.clients):
            plan = ClientPlan(
                index, self.service.base_url, self.run_id, rng.randrange(2**32), self.tokens,
                user_tokens, str(self.workdir / f"client-{index}.json"),
            )
            process = context.Process(target=run_client, args=(plan, self.stop_load), daemon=True)
            process.start()
            self.clients.append(process)

        injector = FaultInjector(self, random.Random(rng.randrange(2**32)))
        load_started = time.monotonic()
        for due, fault in fault_schedule(args.duration):
            time.sleep(max(0.0, load_started + due - time.monotonic()))
            getattr(injector, fault)()
        time.sleep(max(0.0, load_started + args.duration - time.monotonic()))
        self.stop_load.set()
        load_seconds = time.monotonic() - load_started
        log("load stopped; waiting for the clients to finish their last flows")
        clients_finished = self.collect_clients()

        self.reconcile(injector.faults, rng)
        gunicorn_kept = self.service.process.poll() is None and self.service.process.pid == master_pid
        checks = self.ledger_checks(self.read_ledger(database_url), injector.faults)
        checks += self.service_checks(injector.faults, clients_finished, gunicorn_kept)
        checks += self.webhook_checks(database_url, injector.faults)
        report = self.report(checks, injector.faults, load_seconds, time.monotonic() - began, database_url)
        print(report)
        if args.report:
            write_report(Path(args.report), report)
            log(f"report written to {args.report}")
        failed = [check.name for check in checks if check.passed is False]
        if failed:
            self.keep_workdir = True
            log(f"FAILED: {'; '.join(failed)} (logs kept in {self.workdir})")
            return 1
        return 0

    def collect_clients(self) -> bool:
        """Join the clients and merge what they saw; False when one hung or crashed."""
        deadline = time.monotonic() + 2 * REQUEST_BUDGET_SECONDS + 10
        all_finished = True
        for index, process in enumerate(self.clients):
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            results = self.workdir / f"client-{index}.json"
            if process.is_alive() or process.exitcode != 0 or not results.exists():
                all_finished = False
                continue
            saved = json.loads(results.read_text())
            self.tally.merge(saved["tally"])
            for name, value in saved["outcomes"].items():
                merged = getattr(self.outcomes, name)
                setattr(self.outcomes, name, merged + value)
        return all_finished

    def reconcile(self, faults: Faults, rng: random.Random) -> None:
        """Learn every outcome the callers could not: retry with the same key, as a caller does later."""
        services = self.services()
        unknown_creates = self.outcomes.unknown_creates + faults.unknown_creates
        unknown_settles, unknown_registrations = self.outcomes.unknown_settles, self.outcomes.unknown_registrations
        self.outcomes.unknown_creates, self.outcomes.unknown_settles, self.outcomes.unknown_registrations = [], [], []
        for user_id in unknown_registrations:
            answer = ask(self.tally, lambda: services[PAYMENT].register_user(user_id))
            record_registration(self.outcomes, self.tally, user_id, answer)
        for unknown in unknown_creates:
            write = {**unknown["body"], "idempotency_key": unknown["key"]}
            answer = ask(self.tally, lambda: services[unknown["caller"]].create(write))
            created = record_answer(self.outcomes, self.tally, unknown["caller"], unknown["body"], unknown["key"], answer)
            if created is None:
                self.reconciled["refused or still unknown"] += 1
            elif created["replayed"]:
                self.reconciled["had been applied (replayed)"] += 1
            else:
                self.reconciled["had not been applied (written now)"] += 1
        for unknown in unknown_settles:
            answer = ask(self.tally, lambda: services[unknown["caller"]].settle(unknown["id"], unknown["status"]))
            record_settlement(self.outcomes, self.tally, unknown["caller"], unknown["id"], unknown["status"], answer)
            self.reconciled["settlements retried"] += 1

    def read_ledger(self, database_url: str) -> LedgerState:
        """This run's rows, idempotency records, balances and users, straight from the database."""
        from sqlalchemy import create_engine, text

        users = sorted(set(self.customers) | set(self.outcomes.registered))
        engine = create_engine(database_url)
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT id::text, user_id::text, type::text, credits, status::text, description "
                    "FROM user_transactions WHERE user_id = ANY(CAST(:users AS uuid[]))"
                ),
                {"users": users},
            ).all()
            records = connection.execute(
                text("SELECT caller, key, transaction_id::text FROM idempotency_keys"
                     " WHERE key LIKE :evt OR key LIKE :job OR key LIKE :gift"),
                {"evt": f"evt\\_{self.run_id}-%", "job": f"job\\_{self.run_id}-%", "gift": f"gift\\_{self.run_id}-%"},
            ).all()
            balances = {
                row.user_id: row
                for row in connection.execute(
                    text(
                        "SELECT b.user_id::text, b.balance, b.held,"
                        " (SELECT coalesce(sum(remaining + held), 0) FROM credit_lots WHERE user_id = b.user_id) AS in_lots,"
                        " (SELECT coalesce(sum(held), 0) FROM credit_lots WHERE user_id = b.user_id) AS held_in_lots,"
                        " (SELECT coalesce(sum(credits), 0) FROM lot_postings WHERE user_id = b.user_id) AS posted,"
                        " (SELECT count(*) FROM credit_lots WHERE user_id = b.user_id) AS lots"
                        " FROM user_balances AS b WHERE b.user_id = ANY(CAST(:users AS uuid[]))"
                    ),
                    {"users": users},
                )
            }
            known_users = set(
                connection.scalars(text("SELECT id::text FROM users WHERE id = ANY(CAST(:users AS uuid[]))"), {"users": users})
            )
            events_disagree = list(connection.scalars(text(EVENTS_DISAGREE), {"users": users}))
            events = connection.scalar(
                text("SELECT count(*) FROM ledger_events WHERE user_id = ANY(CAST(:users AS uuid[]))"), {"users": users}
            )
        engine.dispose()
        return LedgerState(users, rows, records, balances, known_users, events_disagree, events)

    def ledger_checks(self, ledger: LedgerState, faults: Faults) -> list[Check]:
        """The ledger against what the callers were told."""
        outcomes = self.outcomes
        users, rows, records, balances = ledger.users, ledger.rows, ledger.records, ledger.balances
        rows_by_id = {row.id: row for row in rows}
        rows_by_key: dict[str, list] = defaultdict(list)
        for row in rows:
            rows_by_key[key_of(row.description)].append(row)
        settled = {entry["id"]: entry["status"] for entry in outcomes.settled}
        checks = []

        # Every acknowledged write is in the ledger, once, as acknowledged or moved on legally.
        missing, wrong = [], []
        ids_by_key: dict[str, set] = defaultdict(set)
        for created in outcomes.created:
            ids_by_key[created["key"]].add(created["id"])
            row = rows_by_id.get(created["id"])
            if row is None:
                missing.append(created["id"])
                continue
            legal = {"pending", "completed", "failed"} if created["status"] == "pending" else {created["status"]}
            if (row.user_id, row.type, row.credits) != (created["user_id"], created["kind"], created["credits"]) or row.status not in legal:
                wrong.append(created["id"])
        split_keys = [key for key, ids in ids_by_key.items() if len(ids) > 1]
        checks.append(Check(
            "every acknowledged write exists exactly once, as acknowledged or legally settled since",
            not (missing or wrong or split_keys) and bool(outcomes.created),
            f"{len(outcomes.created)} acknowledged creates; {len(missing)} missing, {len(wrong)} with other values "
            f"or an illegal status, {len(split_keys)} keys acknowledged with two different ids"
            + _sample(missing + wrong + split_keys),
        ))
        lost_settles = [tid for tid, status in settled.items() if tid not in rows_by_id or rows_by_id[tid].status != status]
        checks.append(Check(
            "every acknowledged settlement (PATCH) is in the ledger",
            not lost_settles,
            f"{len(settled)} acknowledged settlements; {len(lost_settles)} not in the ledger" + _sample(lost_settles),
        ))

        # Idempotency: one row per key, and exactly the row its record points at.
        records_by_key = {record.key: record for record in records}
        doubled = [key for key, found in rows_by_key.items() if len(found) > 1]
        unrecorded = [key for key, found in rows_by_key.items() if key not in records_by_key or records_by_key[key].transaction_id != found[0].id]
        orphaned = [record.key for record in records if record.transaction_id not in rows_by_id]
        checks.append(Check(
            "no idempotency key produced two rows (user_transactions against idempotency_keys)",
            not (doubled or unrecorded or orphaned),
            f"{len(rows_by_key)} keys in the ledger, {len(records)} idempotency records; {len(doubled)} keys with "
            f"two or more rows, {len(unrecorded)} rows without their record, {len(orphaned)} records without their row"
            + _sample(doubled + unrecorded + orphaned),
        ))

        acknowledged_ids = {created["id"] for created in outcomes.created}
        phantoms = [row.id for row in rows if row.id not in acknowledged_ids]
        half_written = [key for key in faults.half_sent_keys if key in rows_by_key or key in records_by_key]
        checks.append(Check(
            "no write nobody was told about, and half-sent requests wrote nothing",
            not (phantoms or half_written),
            f"{len(rows)} ledger rows, {len(phantoms)} not acknowledged to any caller; "
            f"{len(faults.half_sent_keys)} half-sent requests, {len(half_written)} of them written"
            + _sample(phantoms + half_written),
        ))

        # Conservation, as the ledger itself states it and as the callers' acknowledged history implies it.
        ledger_totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            if row.status == "completed":
                ledger_totals[row.user_id][0] += row.credits
            elif row.status == "pending" and row.type == "usage":
                ledger_totals[row.user_id][1] -= row.credits
        acknowledged_totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for created in outcomes.created:
            status = settled.get(created["id"], created["status"])
            if status == "completed":
                acknowledged_totals[created["user_id"]][0] += created["credits"]
            elif status == "pending" and created["kind"] == "usage":
                acknowledged_totals[created["user_id"]][1] -= created["credits"]

        def stored(user_id: str) -> list[int]:
            row = balances.get(user_id)
            return [row.balance, row.held] if row else [0, 0]

        unbalanced = [user_id for user_id in users if stored(user_id) != ledger_totals[user_id]]
        checks.append(Check(
            "for every user, balance = sum of completed credits and held = sum of pending usage",
            not unbalanced,
            f"{len(users)} users; {len(unbalanced)} whose balance row disagrees with their ledger rows" + _sample(unbalanced),
        ))
        drifted = [user_id for user_id in users if stored(user_id) != acknowledged_totals[user_id]]
        checks.append(Check(
            "every balance equals what the acknowledged writes add up to",
            not drifted,
            f"{len(users)} users; {len(drifted)} whose balance differs from their acknowledged history" + _sample(drifted),
        ))
        unlotted = [
            user_id for user_id, row in balances.items()
            if (row.in_lots, row.held_in_lots, row.posted) != (row.balance, row.held, row.balance)
        ]
        checks.append(Check(
            "for every user, balance = the lots' remaining + held = the postings, and held = the lots' held",
            not unlotted,
            f"{len(balances)} balances in {sum(row.lots for row in balances.values())} lots; "
            f"{len(unlotted)} that disagree with their lots or postings" + _sample(unlotted),
        ))
        checks.append(Check(
            "every ledger row has exactly its events, and each user's are numbered 1, 2, 3, ... once each",
            not ledger.events_disagree and ledger.events >= len(rows),
            f"{ledger.events} events for {len(rows)} ledger rows; {len(ledger.events_disagree)} users whose events"
            " disagree with their rows (a row without its one transaction.created, updated twice or showing another"
            " status, an expiration without its lot.expired, or a sequence number missing or twice)"
            + _sample(ledger.events_disagree),
        ))
        negative = [user_id for user_id in users if min(*stored(user_id), operator.sub(*stored(user_id))) < 0]
        checks.append(Check(
            "no balance, hold or available credit is negative",
            not negative,
            f"{len(negative)} users below zero" + _sample(negative),
        ))
        unregistered = [user_id for user_id in outcomes.registered if user_id not in ledger.known_users]
        checks.append(Check(
            "every acknowledged registration exists",
            not unregistered,
            f"{len(outcomes.registered)} registrations acknowledged, {len(unregistered)} missing" + _sample(unregistered),
        ))
        return checks

    def service_checks(self, faults: Faults, clients_finished: bool, gunicorn_kept: bool) -> list[Check]:
        """The service's answers, and how it took each fault."""
        outcomes, tally = self.outcomes, self.tally
        checks = []
        errors = self.service.errors_logged()
        fives = {label: count for label, count in tally.responses.items() if label.startswith("5")}
        checks.append(Check(
            "no 500, and every 5xx was a 503 problem+json database_unavailable with Retry-After",
            tally.bad_5xx_count == 0,
            f"5xx by code: {_counts(fives) or 'none'}; {tally.bad_5xx_count} other"
            + (f"; e.g. {json.dumps(tally.bad_5xx[0])}" if tally.bad_5xx else "")
            + (f"; service log: {Counter(errors).most_common(3)}" if errors else ""),
        ))
        checks.append(Check(
            "no error body carries driver, SQL or traceback text",
            tally.leak_count == 0,
            f"{tally.leak_count} error bodies with internals" + (f"; e.g. {json.dumps(tally.leaks[0])}" if tally.leaks else ""),
        ))
        checks.append(Check(
            "no answer a caller could not expect (a 4xx other than the 409s each type may be refused with)",
            tally.unexpected_count == 0,
            f"{tally.unexpected_count} unexpected" + (f"; e.g. {json.dumps(tally.unexpected[0])}" if tally.unexpected else ""),
        ))
        if faults.outages:
            silent = [index for index, outage in enumerate(faults.outages, 1) if not outage.really_down or outage.while_down["503 database_unavailable"] == 0]
            checks.append(Check(
                "while the database was down the service answered 503 database_unavailable",
                not silent,
                f"{len(faults.outages)} outages; 503 database_unavailable answers to the probe: "
                f"{', '.join(str(outage.while_down['503 database_unavailable']) for outage in faults.outages)}; "
                f"503s to clients overall: {tally.responses['503 database_unavailable']}"
                + (f"; outages without them: {silent}" if silent else ""),
            ))
            slow = [index for index, outage in enumerate(faults.outages, 1) if outage.recovered_after is None or outage.recovered_after > RECOVERY_LIMIT_SECONDS]
            checks.append(Check(
                f"served 2xx within {RECOVERY_LIMIT_SECONDS:.0f} s of every database start, without restarting gunicorn",
                not slow and gunicorn_kept,
                f"slowest recovery {_slowest(faults)}; "
                f"gunicorn master {'kept' if gunicorn_kept else 'NOT kept'}" + (f"; too slow: outages {slow}" if slow else ""),
            ))
        else:
            checks.append(Check("database outages", None, "not injected: " + "; ".join(sorted(set(faults.skipped)))))
        checks.append(Check(
            "gunicorn replaced every killed worker",
            faults.workers_not_replaced == 0 and faults.injected[WORKER_KILLED] > 0,
            f"{faults.injected[WORKER_KILLED]} killed ({faults.killed_mid_request} in the middle of a request), "
            f"{faults.workers_not_replaced} not replaced within 20 s"
            + (f"; slowest replacement {max(faults.respawn_seconds):.2f} s" if faults.respawn_seconds else ""),
        ))
        unresolved = len(outcomes.unknown_creates) + len(outcomes.unknown_settles) + len(outcomes.unknown_registrations)
        checks.append(Check(
            "every client finished in time and every unknown outcome was resolved",
            clients_finished and unresolved == 0,
            f"clients {'all finished' if clients_finished else 'did NOT all finish (hung or crashed)'}; "
            f"{unresolved} outcomes still unknown after reconciliation",
        ))
        return checks

    # ---- the report

    def report(self, checks: list[Check], faults: Faults, load_seconds: float, total_seconds: float, database_url: str) -> str:
        args, tally, outcomes = self.args, self.tally, self.outcomes
        created_by = Counter(f"{c['kind']} created {c['status']}" for c in outcomes.created)
        settled_by = Counter()
        kinds = {c["id"]: c["kind"] for c in outcomes.created}
        for entry in outcomes.settled:
            settled_by[f"{kinds.get(entry['id'], '?')} settled {entry['status']}"] += 1
        replayed = sum(c["replayed"] for c in outcomes.created)
        lines = [
            REPORT_START,
            f"### Run of {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"PostgreSQL {self.server_version(database_url)} "
            f"({'embedded, default durability settings' if self.postgres else 'external'}). "
            f"{args.workers} gunicorn sync workers, {args.clients} client processes, seed {args.seed}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| load duration | {load_seconds:.1f} s (whole run {total_seconds:.1f} s) |",
            f"| HTTP requests sent | {tally.requests} |",
            f"| retries (the same request resent, writes with their Idempotency-Key) | {tally.retries} |",
            f"| transport errors (reset, refused, timeout) | {sum(tally.transport_errors.values())} ({_counts(tally.transport_errors) or 'none'}) |",
            f"| calls given up after their retries ({CLIENT_RETRIES} for the services' client, {REQUEST_BUDGET_SECONDS:.0f} s"
            f" for the billing page) | {tally.given_up} |",
            f"| 503 database_unavailable answers | {tally.responses['503 database_unavailable']} |",
            f"| acknowledged writes whose first response was lost (replayed on retry) | {replayed} |",
            f"| usage, refunds and reversals refused beyond what there is (409, writes nothing) | {outcomes.refused} |",
            f"| batches of usage answered (items; atomic ones refused whole) | {outcomes.batches}"
            f" ({outcomes.batch_items} items; {outcomes.atomic_refused}) |",
            f"| history and balance reads | {outcomes.reads} |",
            f"| slowest recovery after a database start | {_slowest(faults)} |",
            "",
            "Acknowledged writes by kind:",
            "",
            "| write | acknowledged |",
            "|---|---|",
            *(f"| {kind} | {count} |" for kind, count in sorted((created_by + settled_by).items())),
            f"| user registered | {len(outcomes.registered)} |",
            "",
            "Outcomes unknown to the caller, settled by retrying with the same key after the load:",
            "",
            "| outcome | count |",
            "|---|---|",
            *(f"| {name} | {count} |" for name, count in sorted(self.reconciled.items())),
            *(["| none | 0 |"] if not self.reconciled else []),
            "",
            "Faults injected:",
            "",
            "| fault | count |",
            "|---|---|",
            *(f"| {kind} | {faults.injected[kind]} |" for kind in FAULT_KINDS),
            "",
        ]
        if faults.outages:
            lines += [
                "Database outages (probe: one `GET /api/balance` every 0.1 s):",
                "",
                "| # | shutdown | down for | answers while down | answers after start, up to the first 2xx | first 2xx after start |",
                "|---|---|---|---|---|---|",
                *(
                    f"| {index} | {outage.mode} | {outage.down_seconds:.1f} s | {_counts(outage.while_down)} | "
                    f"{_counts(outage.while_recovering)} | "
                    f"{'never' if outage.recovered_after is None else f'{outage.recovered_after:.2f} s'} |"
                    for index, outage in enumerate(faults.outages, 1)
                ),
                "",
            ]
        lines += [
            "Responses by status and code:",
            "",
            "| response | count |",
            "|---|---|",
            *(f"| {label} | {count} |" for label, count in sorted(tally.responses.items())),
            "",
            "Checks:",
            "",
            "| check | result | detail |",
            "|---|---|---|",
            *(f"| {check.name} | {_verdict(check.passed)} | {_cell(check.detail)} |" for check in checks),
            REPORT_END,
        ]
        return "\n".join(lines)

    def server_version(self, database_url: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                return connection.scalar(text("SHOW server_version"))
        finally:
            engine.dispose()

    # ---- cleanup

    def webhook_checks(self, database_url: str, faults: Faults, timeout: float = 120.0) -> list[Check]:
        """Every event of the run delivered to the receiver at least once, once the worker has caught up."""
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url)
        deadline = time.monotonic() + timeout
        with engine.connect() as connection:
            while True:
                events = set(connection.scalars(text("SELECT id::text FROM ledger_events")))
                outstanding = connection.scalar(text(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
                )) + len(events - set(connection.scalars(text("SELECT event_id::text FROM webhook_deliveries"))))
                connection.rollback()
                if not outstanding or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            failed = connection.scalar(text("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'"))
        engine.dispose()
        received = self.receiver.accepted
        missing = sorted(events - set(received))
        duplicates = sum(count - 1 for count in received.values())
        return [
            Check(
                "every event was delivered to the subscribed endpoint at least once, signed",
                not missing and not failed and self.receiver.refused_signatures == 0 and bool(events),
                f"{len(events)} events; {len(events) - len(missing)} received, {len(missing)} missing, {failed} failed"
                f" deliveries; {duplicates} received more than once (at least once, by design:"
                f" {faults.injected[WEBHOOK_WORKER_KILLED]} worker kills); {self.receiver.failed_on_purpose} answered 500 on"
                f" purpose and retried; {self.receiver.refused_signatures} bad signatures"
                + (f" ({'; '.join(self.receiver.refusals)})" if self.receiver.refusals else "") + _sample(missing),
            ),
        ]

    def cleanup(self) -> None:
        """Stop everything this run started, in order: clients, gunicorn, PostgreSQL."""
        if self.stop_load is not None:
            self.stop_load.set()
        for process in self.clients:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if self.webhook_worker is not None:
            self.webhook_worker.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.service is not None:
            self.service.stop()
        if self.postgres is not None:
            server_log = self.postgres.pgdata / "server.log"
            if self.keep_workdir and server_log.exists():
                # Keep the server's log for whoever investigates the failure, not its data.
                self.postgres.stop("fast")
                shutil.copy(server_log, self.workdir / "postgres.log")
            self.postgres.destroy()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _sample(items: list) -> str:
    return f" (e.g. {', '.join(map(str, items[:3]))})" if items else ""


def _counts(counter: Counter | dict) -> str:
    return ", ".join(f"{label}: {count}" for label, count in sorted(counter.items()))


def _slowest(faults: Faults) -> str:
    if not faults.outages:
        return "n/a"
    if any(outage.recovered_after is None for outage in faults.outages):
        return "never recovered"
    return f"{max(outage.recovered_after for outage in faults.outages):.2f} s"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def command_line() -> str:
    """The command as it was typed, with any database password masked: the report gets published."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO_ROOT) if script.is_relative_to(REPO_ROOT) else script
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", " ".join(["python", str(shown), *sys.argv[1:]]))


def write_report(path: Path, report: str) -> None:
    """Write the report, or replace the previous one between the markers of a longer document."""
    if path.exists():
        document = path.read_text()
        if REPORT_START in document and REPORT_END in document:
            before = document.split(REPORT_START, 1)[0]
            after = document.split(REPORT_END, 1)[1]
            path.write_text(before + report + after)
            return
    path.write_text(report + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds of load (default 180; 12 with --short)")
    parser.add_argument("--clients", type=int, help="client processes (default 6; 4 with --short)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default 3)")
    parser.add_argument("--outage", type=float, help="seconds PostgreSQL stays down per restart (default 3; 1.5 with --short)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the load and the faults (default: random)")
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one (no database restarts then)")
    parser.add_argument("--report", help="write the Markdown report here (between the report markers if the file has them)")
    parser.add_argument("--short", action="store_true", help="the preset `make test` runs: about 20 s, every kind of fault at least once")
    args = parser.parse_args(argv)
    for name, value in PRESETS["short" if args.short else "long"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    if args.clients < 1 or args.workers < 1 or args.duration < 5:
        parser.error("need at least one client, one worker and five seconds")
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Settings from a developer's shell must not reach the app this run builds.
    for name in list(os.environ):
        if name.startswith(("JWT_", "DATABASE_", "CORS_")):
            del os.environ[name]
    run = FaultRun(args)
    try:
        return run.execute()
    except KeyboardInterrupt:
        log("interrupted; stopping everything this run started")
        return 130
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
