"""Requests generated from openapi.yaml (Schemathesis): no 5xx, every answer as documented,
and nothing that was refused wrote anything.

Every operation is fuzzed once per kind of caller (a user, the payment service,
the generation service, a service with every scope). Bounded for `make test`
by FUZZ_MAX_EXAMPLES (default 25 per operation and caller); `make fuzz` runs
the same test with many more.
"""

from __future__ import annotations

import os
import time
import uuid
import zoneinfo
from datetime import date, datetime, timedelta, timezone

import jwt
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import ignored_auth
from sqlalchemy import text

from transactions_service import api_keys
from transactions_service.extensions import db
from transactions_service.scopes import SERVICE_SCOPES

from .conftest import TEST_SECRET, make_app
from .contract import SPEC_PATH

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
METRICS_TOKEN = "fuzz-metrics-" + uuid.uuid4().hex
READS_NAMING_A_USER = {"/api/transactions", "/api/balance", "/api/lots", "/api/statements", "/api/usage/summary",
                       "/api/transactions/export"}
LEDGER_FOOTPRINT = text(
    "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM user_transactions), "
    "(SELECT count(*) FROM idempotency_keys), (SELECT coalesce(sum(balance), 0) FROM user_balances), "
    "(SELECT coalesce(sum(held), 0) FROM user_balances), "
    "(SELECT count(*) FROM user_transactions WHERE status <> 'pending')"
)
# Who each kind of caller is: a user id, or a service's name and the scopes of its API key.
CALLERS = {
    "user": (str(uuid.uuid4()), []),
    "payment_service": ("payment-service", ["purchases:write", "users:write", "transactions:read"]),
    "generation_service": ("generation-service", ["usage:write", "transactions:read"]),
    "all_scopes": ("ledger-admin", sorted(SERVICE_SCOPES)),
}
# The services' API keys: made now, since Schemathesis authenticates while collecting, and stored by fuzz_app.
NEW_KEYS = {caller: api_keys.generate() for caller, (_name, scopes) in CALLERS.items() if scopes}


def schema_as(caller: str) -> schemathesis.schemas.BaseSchema:
    """The spec, with requests authenticated as ``caller`` (and /metrics with the metrics token)."""
    subject, scopes = CALLERS[caller]
    loaded = schemathesis.openapi.from_path(SPEC_PATH)
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)

    @loaded.auth(cache_by_key=lambda case, _context: case.path)
    class CallerToken:
        def get(self, case, _context):
            if case.path == "/metrics":
                return METRICS_TOKEN
            if scopes:
                return NEW_KEYS[caller].text
            now = int(time.time())
            return jwt.encode({"sub": subject, "iat": now, "exp": now + 3600}, TEST_SECRET, algorithm="HS256")

        def set(self, case, token, _context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    return loaded


@pytest.fixture(scope="module")
def fuzz_app(database_url):
    # Limits high enough for the run: one address sends every request (limits: test_operations.py). Webhook
    # URLs are not resolved (this machine may have no DNS) nor kept to https: test_webhooks.py tests that.
    app = make_app(database_url, METRICS_TOKEN=METRICS_TOKEN, RATELIMIT_DEFAULT="1000000 per minute",
                   WEBHOOK_ALLOW_HTTP=True, WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
    with app.app_context():
        for caller, new in NEW_KEYS.items():
            name, scopes = CALLERS[caller]
            db.session.add(api_keys.ApiKey(id=new.id, name=name, secret_hash=new.secret_hash, scopes=scopes))
        db.session.commit()
    return app


def prepare_ledger(engine, case) -> None:
    """Make generated requests meaningful.

    Generated user ids are random: register them, so valid requests reach the
    ledger rules. Generated Idempotency-Keys repeat across examples with other
    bodies, which is a 422 by design (tested on its own): forget earlier keys.
    """
    candidates = [(case.path_parameters or {}).get("user_id"), (case.query or {}).get("user_id")]
    bodies = [case.body] if isinstance(case.body, dict) else []
    if bodies and isinstance(bodies[0].get("items"), list):  # a batch: each item is a write's body
        bodies = [body for body in bodies[0]["items"] if isinstance(body, dict)]
    candidates.extend(body.get("user_id") for body in bodies)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM idempotency_keys"))
        for candidate in candidates:
            try:
                user_id = uuid.UUID(str(candidate))
            except ValueError:
                continue
            connection.execute(text("INSERT INTO users (id) VALUES (:id) ON CONFLICT DO NOTHING"), {"id": user_id})
        for body in bodies:
            given_back(connection, body)
            in_the_future(body)
    if isinstance(case.query, dict):
        answerable(case.query)


# What a refund and a reversal give back, as made for a generated one: a completed purchase (without a lot of
# its own, so the refund is refused as exceeding what remains, 409) or usage (recorded before lots, so the
# reversal makes a lot of its own, 201) of the body's user, when the body names a transaction that is not one.
_GIVEN_BACK = {
    "refunds": "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
    " VALUES (:id, :user_id, 'purchase', 9999999999.99, 1000000000, 'fuzz', 'completed') ON CONFLICT DO NOTHING",
    "reverses": "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status)"
    " VALUES (:id, :user_id, 'usage', 0, -1000000000, 'fuzz', 'completed') ON CONFLICT DO NOTHING",
}


def in_the_future(body: dict) -> None:
    """A lot's expires_at must lie in the future, which the schema cannot say: move a past one a day ahead."""
    try:
        moment = datetime.fromisoformat(body["expires_at"])
    except (KeyError, TypeError, ValueError):
        return
    if moment.tzinfo is not None and moment <= datetime.now(timezone.utc):
        body["expires_at"] = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()


def _moved(query: dict, name: str, valid, replacement: str) -> None:
    """Replace a query value the schema allows but the service cannot answer (``valid`` says which)."""
    value = query.get(name)
    if isinstance(value, str):
        try:
            if valid(value):
                return
        except (TypeError, ValueError, OverflowError):
            return  # not of the parameter's shape: the 422 is the documented one
        query[name] = replacement


def answerable(query: dict) -> None:
    """Instants and months the schema allows but that lie ahead, ranges too long or backwards, and keys the
    rollup does not keep are 422 by design (tests/test_reports.py): replace them with ones it answers."""
    now = datetime.now(timezone.utc)
    _moved(query, "at", lambda value: datetime.fromisoformat(value).astimezone(timezone.utc) <= now,
           (now - timedelta(days=1)).isoformat())
    _moved(query, "month", lambda value: "1970-01" <= value <= f"{now:%Y-%m}", f"{now:%Y-%m}")
    _moved(query, "group_by", lambda value: value == "metadata.model", "metadata.model")
    _moved(query, "tz", lambda value: value in zoneinfo.available_timezones() | {"UTC"}, "UTC")
    _moved(query, "to", lambda value: 1970 <= date.fromisoformat(value).year <= 9998, f"{now:%Y-%m-%d}")
    try:
        last = date.fromisoformat(query.get("to") or f"{now:%Y-%m-%d}")
    except (TypeError, ValueError):
        return
    _moved(query, "from", lambda value: timedelta(0) <= last - date.fromisoformat(value) <= timedelta(days=300),
           (last - timedelta(days=10)).isoformat())


_TAKEN = "SELECT 1 FROM user_transactions WHERE id = :id AND NOT (user_id = :user_id AND type::text = :type)"


def given_back(connection, body: dict) -> None:
    for field, insert in _GIVEN_BACK.items():
        try:
            target, user_id = uuid.UUID(str(body.get(field))), uuid.UUID(str(body.get("user_id")))
        except ValueError:
            continue
        kind = "purchase" if field == "refunds" else "usage"
        if connection.execute(text(_TAKEN), {"id": target, "user_id": user_id, "type": kind}).first():
            # An earlier example made this id another user's (or another type): name one of this user's.
            target = uuid.uuid4()
            body[field] = str(target)
        connection.execute(text(insert), {"id": target, "user_id": user_id})
        connection.execute(text("INSERT INTO user_balances (user_id, balance, held) VALUES (:id, 0, 0)"
                                " ON CONFLICT DO NOTHING"), {"id": user_id})


@schemathesis.pytest.parametrize(**{caller: schema_as(caller) for caller in CALLERS})
def test_generated_requests_are_answered_as_documented(case, fuzz_app, engine):
    prepare_ledger(engine, case)
    case.operation.schema.app = fuzz_app  # also for the follow-up requests some checks send
    params = {}
    if case.path in READS_NAMING_A_USER and "user_id" not in (case.query or {}) and sent_by_service(case):
        # Services always name the user they read (422 otherwise, which the spec states but
        # cannot express as a schema, since user_id is optional for user tokens).
        params["user_id"] = str(uuid.uuid4())
    with engine.connect() as connection:
        before = connection.execute(LEDGER_FOOTPRINT).one()
    # ignored_auth's probes are re-authenticated by the auth provider above, so it reports valid
    # tokens as ignored; tests/test_security.py sends missing and invalid tokens to every operation.
    response = case.call(app=fuzz_app, params=params)
    if response.status_code != 414:
        # A query string past 2048 bytes is 414 whatever it holds (test_security.py, API4); generated
        # values that break a maxLength can be that long, and the checks do not count 414 as refusing them.
        case.validate_response(response, excluded_checks=[ignored_auth])
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        with engine.connect() as connection:
            assert connection.execute(LEDGER_FOOTPRINT).one() == before, "a refused request wrote to the ledger"


def sent_by_service(case) -> bool:
    return (case.headers or {}).get("Authorization", "").startswith("Bearer tsk_")
