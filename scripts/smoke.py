#!/usr/bin/env python3
"""Staging smoke test: walk the three callers' flows against a deployed service.

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
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

DEFAULT_SMOKE_USER = "5a0ce000-5a0c-4e00-8000-00000000cafe"


class StepFailed(Exception):
    pass


class Client:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, token: str | None = None, body: Any = None, **headers: str) -> tuple[int, dict, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), _json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), _json(error.read())
        except (urllib.error.URLError, TimeoutError) as error:
            raise StepFailed(f"{method} {path}: no answer ({error})") from error


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


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


def run(client: Client, user_id: str, tokens: dict[str, str]) -> list[str]:
    """The steps, in order; each returns a short note for the report."""
    run_id = uuid.uuid4().hex[:12]
    state: dict[str, Any] = {}

    def healthy() -> str:
        status, _, body = client.call("GET", "/healthz")
        expect(status == 200, f"/healthz answered {status}")
        status, _, body = client.call("GET", "/readyz")
        expect(status == 200, f"/readyz answered {status}: {body}")
        return "process and database answer"

    def register() -> str:
        status, _, body = client.call("PUT", f"/api/users/{user_id}", tokens["payment"])
        expect(status in (200, 201), f"registering the smoke user answered {status}: {body}")
        status, _, body = client.call("GET", f"/api/balance?user_id={user_id}", tokens["payment"])
        expect(status == 200, f"reading the balance answered {status}: {body}")
        state["before"] = body
        return f"smoke user {user_id}, balance {body['balance']}, held {body['held']}"

    def pending_purchase() -> str:
        purchase = {"user_id": user_id, "type": "purchase", "amount": "0.01", "credits": 10,
                    "description": f"Smoke test {run_id}", "status": "pending"}
        key = f"smoke-{run_id}"
        status, headers, body = client.call("POST", "/api/transactions", tokens["payment"], purchase, Idempotency_Key=key)
        expect(status == 201, f"recording the purchase answered {status}: {body}")
        again_status, again_headers, again = client.call("POST", "/api/transactions", tokens["payment"], purchase, Idempotency_Key=key)
        expect(again_status == 201 and again == body, "the retried purchase was not replayed")
        expect(again_headers.get("Idempotent-Replayed") == "true", "the replay lacks Idempotent-Replayed: true")
        state["purchase"] = body["id"]
        return f"pending purchase {body['id']}, retry replayed"

    def complete_purchase() -> str:
        status, _, body = client.call("PATCH", f"/api/transactions/{state['purchase']}", tokens["payment"], {"status": "completed"})
        expect(status == 200 and body["status"] == "completed", f"completing the purchase answered {status}: {body}")
        status, _, balance = client.call("GET", f"/api/balance?user_id={user_id}", tokens["payment"])
        expect(balance["balance"] == state["before"]["balance"] + 10, f"balance did not grow by 10: {balance}")
        return "completed, +10 credits"

    def reserve_and_settle_usage() -> str:
        usage = {"user_id": user_id, "type": "usage", "amount": "0", "credits": -10,
                 "description": f"Smoke test {run_id}", "status": "pending", "hold_expires_in": 300}
        status, _, hold = client.call("POST", "/api/transactions", tokens["generation"], usage, Idempotency_Key=f"smoke-usage-{run_id}")
        expect(status == 201, f"reserving credits answered {status}: {hold}")
        status, _, balance = client.call("GET", f"/api/balance?user_id={user_id}", tokens["generation"])
        expect(balance["held"] >= 10, f"the hold is not in held: {balance}")
        status, _, settled = client.call("PATCH", f"/api/transactions/{hold['id']}", tokens["generation"], {"status": "completed"})
        expect(status == 200 and settled["status"] == "completed", f"settling the hold answered {status}: {settled}")
        state["usage"] = hold["id"]
        return f"held and settled {hold['id']}"

    def billing_page_reads() -> str:
        status, _, page = client.call("GET", "/api/transactions?limit=5", tokens["user"])
        expect(status == 200, f"the user's history answered {status}: {page}")
        ids = [row["id"] for row in page["data"]]
        expect(ids[:2] == [state["usage"], state["purchase"]], f"history is not newest first with this run's rows: {ids}")
        status, _, balance = client.call("GET", "/api/balance", tokens["user"])
        expect(status == 200 and balance["balance"] == state["before"]["balance"], f"user's balance is off: {balance}")
        return "history newest first, balance back to where it was"

    steps = [healthy, register, pending_purchase, complete_purchase, reserve_and_settle_usage, billing_page_reads]
    report = []
    for step in steps:
        started = time.perf_counter()
        note = step()
        report.append(f"ok   {step.__name__.replace('_', ' '):<26} {1000 * (time.perf_counter() - started):7.1f} ms  {note}")
        print(report[-1], flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. https://transactions.staging.example")
    parser.add_argument("--user", default=os.environ.get("SMOKE_USER_ID", DEFAULT_SMOKE_USER), help="the dedicated smoke user's id")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    client = Client(args.base_url, args.timeout)
    try:
        run(client, args.user, tokens_from_environment(args.user))
    except StepFailed as failure:
        print(f"FAIL {failure}", flush=True)
        return 1
    print("smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
