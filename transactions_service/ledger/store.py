"""Every statement on the ledger's tables, written once, as SQL, each effect beside its inverse.

The ledger's hot requests are one statement each (ADR 0003), sent on the
autocommit pool (``extensions.run_statement``): a single statement is atomic,
so a spend, its ledger row and its idempotency record commit together or not
at all, with no ``BEGIN`` or ``COMMIT`` round trip. Statements return named
rows (:class:`Transaction`, :class:`Balance`, ...); nothing outside this
module counts columns.

A transaction is read as text that PostgreSQL formats (ids, the amount with
two decimals, RFC 3339 timestamps in UTC): cheaper than the driver's typed
values, which Python would only format back (BENCHMARKS.md).

The balance effects, each beside its inverse:

- a completed usage **spends** (only if that many credits are available);
- a pending usage **holds** (on the same condition), and its settlement
  **consumes** the hold (completed) or **releases** it (failed, or lapsed);
- a completed purchase **credits**, whether it was recorded completed or
  settled later.

Parameters are bound by the driver (``%(name)s``), never formatted into the text.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine

from ..extensions import db, run_statement
from .models import HOLD_EXPIRED

_RFC3339 = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


class Transaction(NamedTuple):
    """A transaction as the API shows it; every field is text PostgreSQL made, but ``credits``."""

    id: str
    user_id: str
    type: str
    amount: str
    credits: int
    description: str
    status: str
    created_at: str
    updated_at: str
    # When a pending usage's hold lapses; None for every other transaction, and once the hold is gone.
    hold_expires_at: str | None


# How each field of Transaction is read; unqualified, so that it serves in a SELECT and in the
# RETURNING clause of an UPDATE. A cast keeps its column's name; the formatted times get names
# of their own, which an ORDER BY on the real columns cannot mistake for them.
_TRANSACTION_SQL = {
    "id": "id::text",
    "user_id": "user_id::text",
    "type": "type::text",
    "amount": "amount::text",
    "credits": "credits",
    "description": "description",
    "status": "status::text",
    "created_at": f"{_RFC3339.format('created_at')} AS created_at_text",
    "updated_at": f"{_RFC3339.format('updated_at')} AS updated_at_text",
    "hold_expires_at": f"CASE WHEN status = 'pending' THEN {_RFC3339.format('hold_expires_at')} END AS hold_expires_at_text",
}
assert tuple(_TRANSACTION_SQL) == Transaction._fields
TRANSACTION_COLUMNS = ", ".join(_TRANSACTION_SQL.values())


class TransactionState(NamedTuple):
    """What explains a refused settlement: the row's status, type, owner and why it failed."""

    type: str
    user_id: uuid.UUID
    status: str
    failure_reason: str | None
    hold_expires_at: datetime | None


class Balance(NamedTuple):
    """A user's totals: completed credits, and credits held by pending usage."""

    user_id: uuid.UUID
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


class Registration(NamedTuple):
    created_at: datetime
    created: bool


class Claim(NamedTuple):
    """An idempotency key as a write claims it: whose key, which key, and the request it came with."""

    caller: str
    key: str
    request_hash: str


class ClaimRecord(NamedTuple):
    """A key's record: the request it was first used with, and the transaction as it was first recorded."""

    request_hash: str
    snapshot: str


class Position(NamedTuple):
    """Where a newest-first history page ends: the last row it showed."""

    created_at: datetime
    id: uuid.UUID


def _transactions(rows: list[tuple[Any, ...]]) -> list[Transaction]:
    return [Transaction(*row) for row in rows]


def _first(shape: Any, statement: str, params: dict[str, Any], **options: Any) -> Any:
    """The statement's first row as ``shape`` (a NamedTuple of its columns), or None."""
    rows = run_statement(statement, params, **options)
    return shape(*rows[0]) if rows else None


def _value(statement: str, params: dict[str, Any], **options: Any) -> Any:
    """The one value of a statement that returns one row of one column (a count, a flag)."""
    ((value,),) = run_statement(statement, params, **options)
    return value


# --- reading -----------------------------------------------------------------------------------


@functools.cache
def _history_page(by_type: bool, by_status: bool, after: bool) -> str:
    conditions = ["user_id = %(user_id)s"]
    if by_type:
        conditions.append("type = %(type)s")
    if by_status:
        conditions.append("status = %(status)s")
    if after:
        conditions.append("(created_at, id) < (%(after_created_at)s, %(after_id)s)")
    return (
        f"SELECT {TRANSACTION_COLUMNS} FROM user_transactions WHERE {' AND '.join(conditions)}"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )


def history_page(
    engine: Engine | None,
    user_id: uuid.UUID,
    limit: int,
    *,
    kind: str | None,
    status: str | None,
    after: Position | None,
) -> list[Transaction]:
    """Up to ``limit`` of a user's transactions, newest first, after a keyset position, on ``engine``."""
    params: dict[str, Any] = {"user_id": str(user_id), "limit": limit, "type": kind, "status": status}
    if after is not None:
        params.update(after_created_at=after.created_at, after_id=str(after.id))
    statement = _history_page(kind is not None, status is not None, after is not None)
    return _transactions(run_statement(statement, params, engine, repeatable=True))


_READ = f"SELECT {TRANSACTION_COLUMNS} FROM user_transactions WHERE id = %(id)s"
_STATE = "SELECT type::text, user_id, status::text, failure_reason, hold_expires_at FROM user_transactions WHERE id = %(id)s"


def read(transaction_id: uuid.UUID) -> Transaction | None:
    return _first(Transaction, _READ, {"id": str(transaction_id)}, repeatable=True)


def state(transaction_id: uuid.UUID) -> TransactionState | None:
    return _first(TransactionState, _STATE, {"id": str(transaction_id)}, repeatable=True)


# Holds that have lapsed count as released at once, before the job (or a spend) releases them.
_BALANCE = (
    "SELECT user_id, balance, held - coalesce((SELECT sum(-credits) FROM user_transactions"
    " WHERE user_id = %(user_id)s AND status = 'pending' AND type = 'usage' AND hold_expires_at <= %(now)s), 0)"
    " FROM user_balances WHERE user_id = %(user_id)s"
)


def balance(user_id: uuid.UUID, now: datetime) -> Balance | None:
    return _first(Balance, _BALANCE, {"user_id": str(user_id), "now": now}, repeatable=True)


_USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = %(id)s)"


def user_exists(user_id: uuid.UUID) -> bool:
    return _value(_USER_EXISTS, {"id": str(user_id)}, repeatable=True)


# --- users ---------------------------------------------------------------------------------------

# The second SELECT reads the snapshot from before the insert: it finds the user only when already known.
_REGISTER = (
    "WITH new AS (INSERT INTO users (id) VALUES (%(id)s) ON CONFLICT (id) DO NOTHING RETURNING created_at)"
    " SELECT created_at, true FROM new"
    " UNION ALL SELECT created_at, false FROM users WHERE id = %(id)s AND NOT EXISTS (SELECT 1 FROM new)"
)


def register(user_id: uuid.UUID) -> Registration:
    """Add the user if new (safe to repeat)."""
    return _first(Registration, _REGISTER, {"id": str(user_id)}, repeatable=True)


# --- recording a transaction, with its effect ---------------------------------------------------


def _credit(rows: str) -> str:
    """Credit completed purchases; ``rows`` yields (user_id, credits). Creates the balance row on first use."""
    return (
        "INSERT INTO user_balances AS b (user_id, balance, held)"
        f" SELECT owner, credits, 0 FROM ({rows}) AS credited(owner, credits)"
        " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now()"
        " RETURNING b.user_id"
    )


# The balance effect of a new ledger row, as a CTE that returns a row when it applied.
EFFECTS = {
    # Completed usage: spend, only if that many credits are available.
    "spend": (
        "UPDATE user_balances SET balance = balance - %(needed)s, updated_at = now()"
        " WHERE user_id = %(user_id)s AND balance - held >= %(needed)s RETURNING user_id"
    ),
    # Pending usage: hold, on the same condition (its inverses: _CONSUME_OR_RELEASE, _RELEASE_LAPSED).
    "hold": (
        "UPDATE user_balances SET held = held + %(needed)s, updated_at = now()"
        " WHERE user_id = %(user_id)s AND balance - held >= %(needed)s RETURNING user_id"
    ),
    # Completed purchase: credit.
    "credit": _credit("VALUES (%(user_id)s::uuid, %(credits)s::integer)"),
}

_NEW_ROW = (
    "%(id)s::uuid, %(user_id)s::uuid, %(type)s::transaction_type, %(amount)s::numeric, %(credits)s::integer,"
    " %(description)s::text, %(status)s::transaction_status, %(created_at)s::timestamptz,"
    " %(created_at)s::timestamptz, %(hold_expires_at)s::timestamptz"
)
_LEDGER_COLUMNS = "id, user_id, type, amount, credits, description, status, created_at, updated_at, hold_expires_at"


@functools.cache
def _record(effect: str | None, keyed: bool) -> str:
    parts = []
    if effect is None:
        source = f"VALUES ({_NEW_ROW})"
    else:
        parts.append(f"effect AS ({EFFECTS[effect]})")
        source = f"SELECT {_NEW_ROW} FROM effect"
    parts.append(f"new AS (INSERT INTO user_transactions ({_LEDGER_COLUMNS}) {source} RETURNING id)")
    if keyed:
        parts.append(
            "claim AS (INSERT INTO idempotency_keys"
            " (caller, key, request_hash, status_code, response_body, transaction_id, user_id)"
            " SELECT %(caller)s, %(key)s, %(request_hash)s, 201, %(snapshot)s, id, %(user_id)s::uuid FROM new)"
        )
    return f"WITH {', '.join(parts)} SELECT id FROM new"


def record(row: dict[str, Any], effect: str | None, claim: Claim | None, snapshot: str | None) -> bool:
    """Insert a ledger row with its balance effect (and the key's record holding ``snapshot``) in one statement.

    ``row`` holds the ledger columns (``_NEW_ROW``) and ``needed``, the credits a
    spend or hold takes. With an effect, the row is inserted only if the effect
    applied: False means the credits were not available (or the user has no
    balance row). The key's record is inserted from the ledger row's RETURNING,
    so it exists exactly when the row does; a key used before fails the
    statement on the record's primary key, writing nothing, when the effect
    applied (``idempotency`` tells that apart). With a key, the statement is
    safe to run again on a fresh connection: a repeat is a replay.
    """
    params = dict(row)
    if claim is not None:
        params.update(claim._asdict(), snapshot=snapshot)
    return bool(run_statement(_record(effect, claim is not None), params, repeatable=claim is not None))


# --- settling a pending transaction: the inverses of hold and of a pending purchase --------------

# Moves one pending row of an allowed type (the caller's, decided before this runs) whose hold
# has not lapsed; then a usage consumes (completed) or releases (failed) its hold, and a
# completed purchase credits. The transaction row is locked before the balance row, as when
# lapsed holds are released, so that the two cannot deadlock.
_SETTLED_PURCHASE = "SELECT user_id::uuid, credits FROM moved WHERE type = 'purchase' AND %(status)s = 'completed'"
_SETTLE = (
    "WITH moved AS (UPDATE user_transactions SET status = %(status)s::transaction_status,"
    " updated_at = greatest(%(now)s, created_at)"
    " WHERE id = %(id)s AND status = 'pending' AND type = ANY(%(types)s::transaction_type[])"
    " AND (hold_expires_at IS NULL OR hold_expires_at > %(now)s)"
    f" RETURNING {TRANSACTION_COLUMNS}),"
    " consume_or_release AS (UPDATE user_balances AS b SET held = b.held + m.credits,"
    " balance = b.balance + CASE WHEN %(status)s = 'completed' THEN m.credits ELSE 0 END, updated_at = now()"
    " FROM moved AS m WHERE m.type = 'usage' AND b.user_id = m.user_id::uuid RETURNING b.user_id),"
    f" credit AS ({_credit(_SETTLED_PURCHASE)})"
    " SELECT * FROM moved"
)


def settle(transaction_id: uuid.UUID, status: str, now: datetime, types: list[str]) -> Transaction | None:
    """Move a pending transaction of one of ``types`` to ``status`` with its effect; None if none moved.

    Safe to run again (on a fresh connection, after one died): a second run moves nothing, and the
    caller then finds the status it asked for.
    """
    params = {"id": str(transaction_id), "status": status, "now": now, "types": types}
    return _first(Transaction, _SETTLE, params, repeatable=True)


# Lapsed holds become failed and release their credits. The rows are locked first (skipped when
# another run holds them, or awaited), then each user's balance row in user-id order, so that
# two runs releasing holds of the same users cannot deadlock.
@functools.cache
def _release_lapsed(scope: str, skip_locked: bool) -> str:
    condition = {"all": "true", "user": "user_id = %(user_id)s", "one": "id = %(id)s"}[scope]
    return (
        "WITH lapsed AS MATERIALIZED (SELECT id FROM user_transactions"
        f" WHERE status = 'pending' AND type = 'usage' AND hold_expires_at <= %(now)s AND {condition}"
        f" ORDER BY hold_expires_at LIMIT %(limit)s FOR UPDATE{' SKIP LOCKED' if skip_locked else ''}),"
        " expired AS (UPDATE user_transactions AS t SET status = 'failed', failure_reason = %(reason)s,"
        " updated_at = greatest(%(now)s, t.created_at) FROM lapsed WHERE t.id = lapsed.id"
        " RETURNING t.user_id, t.credits),"
        " released AS MATERIALIZED (SELECT user_id, sum(credits) AS credits FROM expired GROUP BY user_id),"
        " locked AS MATERIALIZED (SELECT b.user_id FROM user_balances AS b JOIN released USING (user_id)"
        " ORDER BY b.user_id FOR UPDATE OF b),"
        " release AS (UPDATE user_balances AS b SET held = b.held + released.credits, updated_at = now()"
        " FROM released JOIN locked USING (user_id) WHERE b.user_id = released.user_id RETURNING b.user_id)"
        " SELECT count(*) FROM expired"
    )


def release_lapsed_holds(
    now: datetime,
    *,
    user_id: uuid.UUID | None = None,
    transaction_id: uuid.UUID | None = None,
    limit: int | None = None,
    skip_locked: bool = False,
) -> int:
    """Fail the holds lapsed by ``now`` (all, one user's, or one) and release their credits; returns how many.

    A hold moves once: the row lock and ``status = 'pending'`` make concurrent
    releases (the job, a spend, a settlement) release it exactly once.
    """
    scope = "one" if transaction_id is not None else "user" if user_id is not None else "all"
    params = {
        "now": now, "limit": limit, "reason": HOLD_EXPIRED,
        "user_id": None if user_id is None else str(user_id),
        "id": None if transaction_id is None else str(transaction_id),
    }
    # Safe to run again: a released hold is no longer pending.
    return _value(_release_lapsed(scope, skip_locked), params, repeatable=True)


# The balance rows that ledger rows loaded in bulk imply, by the same definition the effects keep:
# balance = completed credits, held = credits of pending usage; a user has a balance row from their
# first completed purchase on. For the benchmark seed, which loads a history with COPY.
_REBUILD_BALANCES = (
    "INSERT INTO user_balances (user_id, balance, held, updated_at)"
    " SELECT user_id, coalesce(sum(credits) FILTER (WHERE status = 'completed'), 0),"
    " coalesce(sum(-credits) FILTER (WHERE status = 'pending' AND type = 'usage'), 0),"
    " max(updated_at) FILTER (WHERE status = 'completed' OR (status = 'pending' AND type = 'usage'))"
    " FROM user_transactions WHERE user_id = ANY(%(users)s::uuid[]) GROUP BY user_id"
    " HAVING bool_or(type = 'purchase' AND status = 'completed')"
)


def rebuild_balances(cursor: Any, user_ids: list[str]) -> None:
    """Insert the balance rows of users whose ledger rows were loaded in bulk, on the loader's own cursor."""
    cursor.execute(_REBUILD_BALANCES, {"users": user_ids})


# Demo data only (`flask demo seed`): spread a history over the past weeks, as a real one would be.
_BACKDATE = "UPDATE user_transactions SET created_at = %(moment)s, updated_at = %(moment)s WHERE id = %(id)s"


def backdate(transaction_id: uuid.UUID, moment: datetime) -> None:
    run_statement(_BACKDATE, {"id": str(transaction_id), "moment": moment})


# --- idempotency records ------------------------------------------------------------------------

_FIND_CLAIM = "SELECT request_hash, response_body FROM idempotency_keys WHERE caller = %(caller)s AND key = %(key)s"


def find_claim(caller: str, key: str) -> ClaimRecord | None:
    return _first(ClaimRecord, _FIND_CLAIM, {"caller": caller, "key": key}, repeatable=True)


# Takes the key for a moment in a transaction that is always rolled back: a row inserted means
# nobody holds the key, no row means it is recorded, and a lock timeout (SQLSTATE 55P03, raised
# to the caller) means a request still in flight holds it. Nothing here reads the server's words.
_PROBE_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '100ms'"
_PROBE_CLAIM = (
    "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id)"
    " VALUES (%(caller)s, %(key)s, '', 201, '', gen_random_uuid()) ON CONFLICT DO NOTHING RETURNING true"
)


def key_is_free(caller: str, key: str) -> bool:
    """True if no request holds or has recorded the key; raises OperationalError if one in flight holds it."""
    with db.engine.connect() as connection:
        try:
            connection.exec_driver_sql(_PROBE_LOCK_TIMEOUT)
            return bool(connection.exec_driver_sql(_PROBE_CLAIM, {"caller": caller, "key": key}).fetchall())
        finally:
            connection.rollback()


_PRUNE_CLAIMS = (
    "WITH pruned AS (DELETE FROM idempotency_keys WHERE created_at < %(before)s RETURNING 1) SELECT count(*) FROM pruned"
)


def prune_claims(older_than: datetime) -> int:
    return _value(_PRUNE_CLAIMS, {"before": older_than})
