"""Every statement on the webhook tables, each on the autocommit pool as one statement (ADR 0003)."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any, NamedTuple

from ..extensions import run_statement
from ..ledger.store import RFC3339 as _RFC3339
from ..ledger.store import FeedPosition, Position
from . import models  # noqa: F401  (the tables, for the migrations' checks)
FAN_OUT = "webhooks"  # the fan-out's row in event_relays: how far into the feed deliveries are queued


class Endpoint(NamedTuple):
    id: str
    url: str
    event_types: list[str]
    description: str
    disabled: bool
    failing_since: str | None
    created_at: str
    updated_at: str


_ENDPOINT_COLUMNS = (
    f"id::text, url, event_types, description, disabled, {_RFC3339.format('failing_since')},"
    f" {_RFC3339.format('created_at')}, {_RFC3339.format('updated_at')}"
)
_CREATE = (
    "INSERT INTO webhook_endpoints (id, url, event_types, description, secret)"
    f" VALUES (%(id)s, %(url)s, %(event_types)s, %(description)s, %(secret)s) RETURNING {_ENDPOINT_COLUMNS}"
)
_LIST = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
_GET = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %(id)s"
_DELETE = "DELETE FROM webhook_endpoints WHERE id = %(id)s RETURNING id"
# A rotation keeps the old secret signing beside the new one until ``until``, so receivers can switch.
_ROTATE = (
    "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = %(until)s, secret = %(secret)s,"
    f" updated_at = now() WHERE id = %(id)s RETURNING {_ENDPOINT_COLUMNS}"
)
_UPDATABLE = ("url", "event_types", "description", "disabled")


def _endpoint(statement: str, params: dict[str, Any]) -> Endpoint | None:
    rows = run_statement(statement, params, repeatable=True)
    return Endpoint(*rows[0]) if rows else None


def create_endpoint(url: str, event_types: list[str], description: str, secret: str) -> Endpoint:
    params = {"id": str(uuid.uuid4()), "url": url, "event_types": event_types, "description": description,
              "secret": secret}
    return _endpoint(_CREATE, params)


def list_endpoints() -> list[Endpoint]:
    return [Endpoint(*row) for row in run_statement(_LIST, {}, repeatable=True)]


def get_endpoint(endpoint_id: uuid.UUID) -> Endpoint | None:
    return _endpoint(_GET, {"id": str(endpoint_id)})


@functools.cache
def _update(fields: tuple[str, ...]) -> str:
    changes = [f"{field} = %({field})s" for field in fields]
    if "disabled" in fields:  # enabled again: its failures so far no longer count
        changes.append("failing_since = CASE WHEN %(disabled)s THEN failing_since END")
    return (
        f"UPDATE webhook_endpoints SET {', '.join(changes)}, updated_at = now() WHERE id = %(id)s"
        f" RETURNING {_ENDPOINT_COLUMNS}"
    )


def update_endpoint(endpoint_id: uuid.UUID, changes: dict[str, Any]) -> Endpoint | None:
    fields = tuple(field for field in _UPDATABLE if field in changes)
    if not fields:
        return get_endpoint(endpoint_id)
    return _endpoint(_update(fields), {**changes, "id": str(endpoint_id)})


def delete_endpoint(endpoint_id: uuid.UUID) -> bool:
    return bool(run_statement(_DELETE, {"id": str(endpoint_id)}, repeatable=True))


def rotate_secret(endpoint_id: uuid.UUID, secret: str, previous_until: datetime) -> Endpoint | None:
    return _endpoint(_ROTATE, {"id": str(endpoint_id), "secret": secret, "until": previous_until})


# --- fan-out: the feed's events become deliveries ----------------------------------------------------

_ACTIVE = "SELECT id::text, event_types FROM webhook_endpoints WHERE NOT disabled"
_START_FAN_OUT = (
    "INSERT INTO event_relays (name, after_xid, after_position) VALUES (%(name)s, 0, 0) ON CONFLICT (name) DO NOTHING"
)
# Moves the fan-out's position from where this worker read it to past the page, queuing the page's
# deliveries, or does nothing at all when another worker moved it first.
_FAN_OUT = (
    "WITH moved AS (UPDATE event_relays SET after_xid = %(to_xid)s, after_position = %(to_position)s, updated_at = now()"
    " WHERE name = %(name)s AND (after_xid, after_position) = (%(from_xid)s, %(from_position)s) RETURNING 1),"
    " queued AS (INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, next_attempt_at)"
    " SELECT gen_random_uuid(), d.endpoint_id, d.event_id, d.event_type, d.payload, now()"
    " FROM unnest(%(endpoints)s::text[]::uuid[], %(events)s::text[]::uuid[], %(types)s::text[], %(payloads)s::text[])"
    " AS d(endpoint_id, event_id, event_type, payload) WHERE EXISTS (SELECT 1 FROM moved)"
    " ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM queued)"
)


class Queued(NamedTuple):
    endpoint_id: str
    event_id: str
    event_type: str
    payload: str


def active_endpoints() -> list[tuple[str, list[str]]]:
    return [tuple(row) for row in run_statement(_ACTIVE, {}, repeatable=True)]


def start_fan_out() -> None:
    run_statement(_START_FAN_OUT, {"name": FAN_OUT}, repeatable=True)


def fan_out(before: FeedPosition, after: FeedPosition, queued: list[Queued]) -> bool:
    """Queue these deliveries and move the fan-out past them; False if another worker had moved it."""
    params = {
        "name": FAN_OUT, "from_xid": before.xid, "from_position": before.position, "to_xid": after.xid,
        "to_position": after.position, "endpoints": [q.endpoint_id for q in queued],
        "events": [q.event_id for q in queued], "types": [q.event_type for q in queued],
        "payloads": [q.payload for q in queued],
    }
    ((moved, _count),) = run_statement(_FAN_OUT, params, repeatable=True)
    return bool(moved)


# --- waking: while a worker waits, the writes that add events notify it ----------------------------

WAKE_CHANNEL = "ledger_events"  # notified by the trigger ledger_events_wake (migration 0009)
_ARM = (
    "UPDATE event_relays SET wake_until = now() + make_interval(secs => %(seconds)s) WHERE name = %(name)s"
    " RETURNING wake_until"
)
_WAITING = "SELECT wake_until > now() FROM event_relays WHERE name = %(name)s"
_DISARM = "UPDATE event_relays SET wake_until = NULL WHERE name = %(name)s AND wake_until = %(until)s"


def arm_wake(seconds: float) -> datetime | None:
    """Ask the writes of the next ``seconds`` to notify ``WAKE_CHANNEL``; returns until when (to disarm)."""
    rows = run_statement(_ARM, {"name": FAN_OUT, "seconds": seconds}, repeatable=True)
    return rows[0][0] if rows else None


def worker_waiting() -> bool:
    """Whether a worker is waiting for the writes to wake it."""
    rows = run_statement(_WAITING, {"name": FAN_OUT}, repeatable=True)
    return bool(rows and rows[0][0])


def disarm_wake(until: datetime) -> None:
    """Stop the notifications this worker asked for, unless another worker has asked for longer since."""
    run_statement(_DISARM, {"name": FAN_OUT, "until": until}, repeatable=True)


# --- delivering -------------------------------------------------------------------------------------


class Claimed(NamedTuple):
    id: str
    endpoint_id: str
    event_id: str
    payload: str
    attempts: int
    url: str
    secret: str
    previous_secret: str | None


# Due deliveries of enabled endpoints that no live lease holds, leased to this worker; the attempt is
# counted now, so one a worker died in counts too.
_CLAIM = (
    "WITH due AS (SELECT d.id FROM webhook_deliveries AS d JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until <= now())"
    " AND NOT e.disabled ORDER BY d.next_attempt_at LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED)"
    " UPDATE webhook_deliveries AS d SET lease_until = now() + make_interval(secs => %(lease)s),"
    " attempts = d.attempts + 1 FROM due, webhook_endpoints AS e WHERE d.id = due.id AND e.id = d.endpoint_id"
    " RETURNING d.id::text, d.endpoint_id::text, d.event_id::text, d.payload, d.attempts, e.url, e.secret,"
    " CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END"
)
# An attempt's outcome: recorded, the delivery moved on (delivered, due again, or failed for good), and
# the endpoint's run of failures started, ended, or long enough to disable it.
_FINISH = (
    "WITH attempt AS (INSERT INTO webhook_attempts"
    " (delivery_id, attempted_at, status_code, error, duration_ms, next_attempt_at)"
    " VALUES (%(id)s, %(at)s, %(status_code)s, %(error)s, %(duration_ms)s, %(next)s)),"
    " delivery AS (UPDATE webhook_deliveries SET status = %(status)s, next_attempt_at = %(next)s, lease_until = NULL,"
    " finished_at = CASE WHEN %(status)s <> 'pending' THEN %(at)s END WHERE id = %(id)s AND status = 'pending'"
    " RETURNING endpoint_id)"
    " UPDATE webhook_endpoints AS e SET"
    " failing_since = CASE WHEN %(succeeded)s THEN NULL ELSE coalesce(e.failing_since, %(at)s) END,"
    " disabled = e.disabled OR (NOT %(succeeded)s"
    "   AND coalesce(e.failing_since, %(at)s) <= %(at)s - make_interval(days => %(disable_after_days)s))"
    " FROM delivery WHERE e.id = delivery.endpoint_id"
)


class Outcome(NamedTuple):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    status: str  # pending (to be tried again at ``next``), delivered or failed
    next: datetime | None


def claim_due(limit: int, lease_seconds: float) -> list[Claimed]:
    rows = run_statement(_CLAIM, {"limit": limit, "lease": lease_seconds})
    return [Claimed(*row) for row in rows]


def finish(delivery_id: str, outcome: Outcome, disable_after_days: int) -> None:
    params = {**outcome._asdict(), "id": delivery_id, "succeeded": outcome.status == "delivered",
              "disable_after_days": disable_after_days}
    run_statement(_FINISH, params)


# --- reading deliveries -----------------------------------------------------------------------------


class Delivery(NamedTuple):
    id: str
    event_id: str
    event_type: str
    status: str
    attempt_count: int
    next_attempt_at: str | None
    created_at: str
    finished_at: str | None


class Attempt(NamedTuple):
    delivery_id: str
    attempted_at: str
    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: str | None


_DELIVERY_COLUMNS = (
    "id::text, event_id::text, event_type, status, attempts,"
    f" CASE WHEN status = 'pending' THEN {_RFC3339.format('next_attempt_at')} END,"
    f" {_RFC3339.format('created_at')}, {_RFC3339.format('finished_at')}"
)
_ATTEMPTS = (
    f"SELECT delivery_id::text, {_RFC3339.format('attempted_at')}, status_code, error, duration_ms,"
    f" {_RFC3339.format('next_attempt_at')} FROM webhook_attempts WHERE delivery_id = ANY(%(ids)s::text[]::uuid[]) ORDER BY id"
)
_RETRY = (
    "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), lease_until = NULL, finished_at = NULL"
    f" WHERE id = %(id)s AND endpoint_id = %(endpoint_id)s AND status <> 'pending' RETURNING {_DELIVERY_COLUMNS}"
)
_ONE_DELIVERY = f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = %(id)s AND endpoint_id = %(endpoint_id)s"


@functools.cache
def _deliveries_page(after: bool) -> str:
    condition = " AND (created_at, id) < (%(after_created_at)s, %(after_id)s)" if after else ""
    return (
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = %(endpoint_id)s{condition}"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )


def deliveries_page(endpoint_id: uuid.UUID, limit: int, after: Position | None) -> list[Delivery]:
    params: dict[str, Any] = {"endpoint_id": str(endpoint_id), "limit": limit}
    if after is not None:
        params.update(after_created_at=after.created_at, after_id=str(after.id))
    return [Delivery(*row) for row in run_statement(_deliveries_page(after is not None), params, repeatable=True)]


def attempts_of(delivery_ids: list[str]) -> list[Attempt]:
    return [Attempt(*row) for row in run_statement(_ATTEMPTS, {"ids": delivery_ids}, repeatable=True)]


def retry_delivery(endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None:
    """Make a delivered or failed delivery due now (the same webhook-id); None if it is not one."""
    rows = run_statement(_RETRY, {"id": str(delivery_id), "endpoint_id": str(endpoint_id)}, repeatable=True)
    return Delivery(*rows[0]) if rows else None


def get_delivery(endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None:
    rows = run_statement(_ONE_DELIVERY, {"id": str(delivery_id), "endpoint_id": str(endpoint_id)}, repeatable=True)
    return Delivery(*rows[0]) if rows else None
