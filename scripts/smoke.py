#!/usr/bin/env python3
"""Staging smoke test: walk the three callers' flows against a deployed service, as the callers do.

    pip install ./clients/python   # the callers' client, which the flows go through
    python scripts/smoke.py --base-url https://transactions.staging.example

The services' API keys come from SMOKE_PAYMENT_KEY and SMOKE_GENERATION_KEY
(made with `flask --app wsgi keys create`, as the real callers hold theirs).
The smoke user's token comes from SMOKE_USER_TOKEN, or is signed here with
JWT_SECRET_KEY when that is set (HS256, with JWT_DECODE_AUDIENCE and
JWT_DECODE_ISSUER as the service checks them; development and staging only).
The smoke user (SMOKE_USER_ID, or --user) is dedicated to this check: every
run adds a small purchase and a small usage to its ledger. Each step is
reported; the first failure stops the run with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from transactions_client import Client, ProblemError, ServiceUnreachable

DEFAULT_SMOKE_USER = "5a0ce000-5a0c-4e00-8000-00000000cafe"


class StepFailed(Exception):
    pass


@contextmanager
def answered(what: str) -> Iterator[None]:
    """A step's call, its failure told as what it was doing and what the service answered."""
    try:
        yield
    except ProblemError as problem:
        raise StepFailed(f"{what} answered {problem.status}: {problem.code}: {problem.detail}") from problem
    except ServiceUnreachable as failure:
        raise StepFailed(f"{what}: no answer ({failure})") from failure


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def tokens_from_environment(user_id: str) -> dict[str, str]:
    keys = {"payment": "SMOKE_PAYMENT_KEY", "generation": "SMOKE_GENERATION_KEY"}
    missing = [variable for variable in keys.values() if not os.environ.get(variable)]
    user_token = os.environ.get("SMOKE_USER_TOKEN", "")
    secret = os.environ.get("JWT_SECRET_KEY")
    if not user_token and not secret:
        missing.append("SMOKE_USER_TOKEN (or JWT_SECRET_KEY to sign one here)")
    if missing:
        raise SystemExit(f"smoke: set {', '.join(missing)}")
    credentials = {role: os.environ[variable] for role, variable in keys.items()}
    if not user_token:
        import jwt

        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + 600}
        for claim, variable in (("aud", "JWT_DECODE_AUDIENCE"), ("iss", "JWT_DECODE_ISSUER")):
            if os.environ.get(variable):
                claims[claim] = os.environ[variable]
        user_token = jwt.encode(claims, secret, algorithm="HS256")
    return {"user": user_token, **credentials}


def _health(base_url: str, timeout: float) -> str:
    for path in ("/healthz", "/readyz"):
        try:
            response = httpx.get(base_url + path, timeout=timeout)
        except httpx.HTTPError as failure:
            raise StepFailed(f"GET {path}: no answer ({failure!r})") from failure
        expect(response.status_code == 200, f"{path} answered {response.status_code}: {response.text[:200]}")
    return "process and database answer"


def run(base_url: str, user_id: str, tokens: dict[str, str], timeout: float = 10.0) -> list[str]:
    """The steps, in order, each through the client the callers use; each returns a short note for the report."""
    run_id = uuid.uuid4().hex[:12]
    state: dict[str, Any] = {}
    payment, generation, user = (Client(base_url, tokens[role], timeout=timeout)
                                 for role in ("payment", "generation", "user"))

    def register() -> str:
        with answered("registering the smoke user"):
            payment.register_user(user_id)
        with answered("reading the balance"):
            state["before"] = payment.balance(user_id)
        return f"smoke user {user_id}, balance {state['before'].balance}, held {state['before'].held}"

    def pending_purchase() -> str:
        key = f"smoke-{run_id}"
        with answered("recording the purchase"):
            first = payment.record_purchase(user_id, 10, "0.01", f"Smoke test {run_id}", status="pending",
                                            idempotency_key=key)
            again = payment.record_purchase(user_id, 10, "0.01", f"Smoke test {run_id}", status="pending",
                                            idempotency_key=key)
        expect(again.replayed and again.id == first.id and not first.replayed, "the retried purchase was not replayed")
        state["purchase"] = first.id
        return f"pending purchase {first.id}, retry replayed"

    def complete_purchase() -> str:
        with answered("completing the purchase"):
            settled = payment.settle(state["purchase"], "completed")
            balance = payment.balance(user_id)
        expect(settled.status == "completed", f"the purchase is {settled.status}")
        expect(balance.balance == state["before"].balance + 10, f"balance did not grow by 10: {balance}")
        return "completed, +10 credits"

    def reserve_and_settle_usage() -> str:
        with answered("reserving credits"):
            hold = generation.reserve(user_id, 10, f"Smoke test {run_id}", hold_expires_in=300,
                                      idempotency_key=f"smoke-usage-{run_id}")
            held = generation.balance(user_id).held
        expect(held >= 10, f"the hold is not in held: {held}")
        with answered("settling the hold"):
            settled = generation.settle(hold.id, "completed")
        expect(settled.status == "completed", f"the hold is {settled.status}")
        state["usage"] = hold.id
        return f"held and settled {hold.id}"

    def billing_page_reads() -> str:
        with answered("the user's history"):
            newest = [row.id for _, row in zip(range(2), user.history(user_id, page_size=5))]
            balance = user.balance(user_id)
        expect(newest == [state["usage"], state["purchase"]], f"history is not newest first with this run's rows: {newest}")
        expect(balance.balance == state["before"].balance, f"user's balance is off: {balance}")
        return "history newest first, balance back to where it was"

    steps: list[tuple[str, Callable[[], str]]] = [
        ("healthy", lambda: _health(base_url, timeout)), ("register", register), ("pending purchase", pending_purchase),
        ("complete purchase", complete_purchase), ("reserve and settle usage", reserve_and_settle_usage),
        ("billing page reads", billing_page_reads),
    ]
    report = []
    try:
        for name, step in steps:
            started = time.perf_counter()
            note = step()
            report.append(f"ok   {name:<26} {1000 * (time.perf_counter() - started):7.1f} ms  {note}")
            print(report[-1], flush=True)
    finally:
        for client in (payment, generation, user):
            client.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. https://transactions.staging.example")
    parser.add_argument("--user", default=os.environ.get("SMOKE_USER_ID", DEFAULT_SMOKE_USER), help="the dedicated smoke user's id")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        run(args.base_url.rstrip("/"), args.user, tokens_from_environment(args.user), args.timeout)
    except StepFailed as failure:
        print(f"FAIL {failure}", flush=True)
        return 1
    print("smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
