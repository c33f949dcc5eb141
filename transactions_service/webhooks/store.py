"""Every statement on the webhook tables, each on the autocommit pool as one statement (ADR 0003)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from ..extensions import run_statement
from ..ledger.store import RFC3339, VISIBLE_EVENTS, Position
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
    f"id::text, url, event_types, description, disabled, {RFC3339.format('failing_since')},"
    f" {RFC3339.format('created_at')}, {RFC3339.format('updated_at')}"
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

_START_FAN_OUT = (
    "INSERT INTO event_relays (name, after_xid, after_position) VALUES (%(name)s, 0, 0) ON CONFLICT (name) DO NOTHING"
)
# One statement: the next page of the feed after the fan-out's position, a delivery queued for each
# event and enabled endpoint subscribed to its type, and the position moved past the page. The
# position row is locked for it, and a worker that finds it locked skips the fan-out this time
# instead of waiting. The body is built here once and sent as it is on every attempt: the event's
# data as written, never read again.
_FAN_OUT = (
    "WITH fan_out AS (SELECT after_xid, after_position FROM event_relays WHERE name = %(name)s"
    " FOR UPDATE SKIP LOCKED),"
    # The position as two scalar subqueries, values by the time the scan starts, so that the feed's
    # index seeks to it; as a join, the scan read every event from the start of the feed.
    " page AS (SELECT e.xid, e.position, e.id, e.type, e.created_at, e.data FROM ledger_events AS e"
    " WHERE (e.xid, e.position) > ((SELECT after_xid FROM fan_out)::text::xid8, (SELECT after_position FROM fan_out))"
    f" AND e.{VISIBLE_EVENTS} ORDER BY e.xid, e.position LIMIT %(limit)s),"
    " last AS (SELECT xid, position FROM page ORDER BY xid DESC, position DESC LIMIT 1),"
    " moved AS (UPDATE event_relays AS r SET after_xid = last.xid::text::bigint, after_position = last.position,"
    " updated_at = now() FROM last WHERE r.name = %(name)s),"
    " queued AS (INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, payload, next_attempt_at)"
    " SELECT gen_random_uuid(), w.id, page.id, page.type, '{\"type\":\"' || page.type || '\",\"timestamp\":\"' ||"
    f" {RFC3339.format('page.created_at')} || '\",\"data\":' || page.data::text || '}}', now()"
    " FROM page JOIN webhook_endpoints AS w ON NOT w.disabled AND page.type = ANY(w.event_types)"
    " ON CONFLICT (endpoint_id, event_id) DO NOTHING)"
    " SELECT count(*) FROM page"
)


def start_fan_out() -> None:
    run_statement(_START_FAN_OUT, {"name": FAN_OUT}, repeatable=True)


def fan_out(limit: int) -> int:
    """Queue the deliveries of the next page of the feed, up to ``limit`` events; returns how many it covered."""
    ((covered,),) = run_statement(_FAN_OUT, {"name": FAN_OUT, "limit": limit}, repeatable=True)
    return covered


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


# Due deliveries of enabled endpoints that no live lease holds, leased to this worker: up to
# ``per_endpoint`` of each endpoint's, less those this worker is sending already (``busy``), so that a
# slow endpoint's backlog cannot take every thread; then the soonest due first. The attempt is
# counted now, so one a worker died in counts too.
_CLAIM = (
    "WITH busy AS (SELECT * FROM unnest(%(busy_endpoints)s::text[]::uuid[], %(busy_counts)s::text[]::int[])"
    " AS b(endpoint_id, sending)),"
    " due AS (SELECT d.id FROM webhook_endpoints AS e LEFT JOIN busy AS b ON b.endpoint_id = e.id"
    " CROSS JOIN LATERAL (SELECT d.id, d.next_attempt_at FROM webhook_deliveries AS d WHERE d.endpoint_id = e.id"
    " AND d.status = 'pending' AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until <= now())"
    " ORDER BY d.next_attempt_at LIMIT greatest(%(per_endpoint)s - coalesce(b.sending, 0), 0)"
    " FOR UPDATE OF d SKIP LOCKED) AS d"
    " WHERE NOT e.disabled ORDER BY d.next_attempt_at LIMIT %(limit)s)"
    " UPDATE webhook_deliveries AS d SET lease_until = now() + make_interval(secs => %(lease)s),"
    " attempts = d.attempts + 1 FROM due, webhook_endpoints AS e WHERE d.id = due.id AND e.id = d.endpoint_id"
    " RETURNING d.id::text, d.endpoint_id::text, d.event_id::text, d.payload, d.attempts, e.url, e.secret,"
    " CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END"
)
# Attempts' outcomes, many in one statement: each recorded, its delivery moved on (delivered, due again,
# or failed for good), and each endpoint's run of failures ended by its latest success, or started by
# its first failure after that, and disabled once that run is long enough.
_FINISH = (
    "WITH outcome AS (SELECT * FROM unnest(%(ids)s::text[]::uuid[], %(ats)s::text[]::timestamptz[],"
    " %(status_codes)s::text[]::int[], %(errors)s::text[], %(durations)s::text[]::int[], %(statuses)s::text[],"
    " %(nexts)s::text[]::timestamptz[]) AS o(id, at, status_code, error, duration_ms, status, next)),"
    " attempt AS (INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, error, duration_ms,"
    " next_attempt_at) SELECT id, at, status_code, error, duration_ms, next FROM outcome),"
    " delivery AS (UPDATE webhook_deliveries AS d SET status = o.status, next_attempt_at = o.next, lease_until = NULL,"
    " finished_at = CASE WHEN o.status <> 'pending' THEN o.at END FROM outcome AS o"
    " WHERE d.id = o.id AND d.status = 'pending' RETURNING d.endpoint_id, o.at, o.status = 'delivered' AS succeeded),"
    " runs AS (SELECT endpoint_id, max(at) FILTER (WHERE succeeded) AS succeeded_at, max(at) AS last_at"
    " FROM delivery GROUP BY endpoint_id),"
    " failures AS (SELECT r.endpoint_id, r.succeeded_at, r.last_at, min(d.at) FILTER (WHERE NOT d.succeeded"
    " AND (r.succeeded_at IS NULL OR d.at > r.succeeded_at)) AS failed_at FROM runs AS r"
    " JOIN delivery AS d USING (endpoint_id) GROUP BY r.endpoint_id, r.succeeded_at, r.last_at),"
    " since AS (SELECT f.endpoint_id, f.last_at, CASE WHEN f.failed_at IS NULL THEN NULL"
    " WHEN f.succeeded_at IS NULL THEN coalesce(e.failing_since, f.failed_at) ELSE f.failed_at END AS failing_since"
    " FROM failures AS f JOIN webhook_endpoints AS e ON e.id = f.endpoint_id)"
    " UPDATE webhook_endpoints AS e SET failing_since = since.failing_since,"
    " disabled = e.disabled OR coalesce(since.failing_since <= since.last_at"
    " - make_interval(days => %(disable_after_days)s), false)"
    " FROM since WHERE e.id = since.endpoint_id"
)


class Outcome(NamedTuple):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    status: str  # pending (to be tried again at ``next``), delivered or failed
    next: datetime | None


def claim_due(limit: int, lease_seconds: float, per_endpoint: int,
              busy: Mapping[str, int] | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries, at most ``per_endpoint`` of an endpoint's with those ``busy``."""
    busy = busy or {}
    params = {"limit": limit, "lease": lease_seconds, "per_endpoint": per_endpoint,
              "busy_endpoints": list(busy), "busy_counts": [str(count) for count in busy.values()]}
    return [Claimed(*row) for row in run_statement(_CLAIM, params)]


def finish(outcomes: list[tuple[str, Outcome]], disable_after_days: int) -> None:
    """Record these attempts (delivery id, outcome), in the order they were made, in one statement."""

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    params = {
        "ids": [delivery_id for delivery_id, _ in outcomes], "ats": [o.at.isoformat() for _, o in outcomes],
        "status_codes": [text(o.status_code) for _, o in outcomes], "errors": [o.error for _, o in outcomes],
        "durations": [str(o.duration_ms) for _, o in outcomes], "statuses": [o.status for _, o in outcomes],
        "nexts": [o.next.isoformat() if o.next else None for _, o in outcomes],
        "disable_after_days": disable_after_days,
    }
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
    f" CASE WHEN status = 'pending' THEN {RFC3339.format('next_attempt_at')} END,"
    f" {RFC3339.format('created_at')}, {RFC3339.format('finished_at')}"
)
_ATTEMPTS = (
    f"SELECT delivery_id::text, {RFC3339.format('attempted_at')}, status_code, error, duration_ms,"
    f" {RFC3339.format('next_attempt_at')} FROM webhook_attempts WHERE delivery_id = ANY(%(ids)s::text[]::uuid[]) ORDER BY id"
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


# Finished deliveries (and their attempts, by the foreign key's cascade) made before ``before``, endpoint
# by endpoint on each endpoint's index of deliveries; pending ones stay, however old, until they finish.
_PRUNE = (
    "WITH old AS (SELECT d.id FROM webhook_endpoints AS e CROSS JOIN LATERAL (SELECT id FROM webhook_deliveries AS d"
    " WHERE d.endpoint_id = e.id AND d.created_at < %(before)s AND d.status <> 'pending'"
    " ORDER BY d.created_at LIMIT %(limit)s) AS d LIMIT %(limit)s),"
    " pruned AS (DELETE FROM webhook_deliveries AS d USING old WHERE d.id = old.id RETURNING 1)"
    " SELECT count(*) FROM pruned"
)


def prune_deliveries(before: datetime, limit: int) -> int:
    """Delete up to ``limit`` finished deliveries made before ``before``, with their attempts; returns how many."""
    ((count,),) = run_statement(_PRUNE, {"before": before, "limit": limit}, repeatable=True)
    return count
