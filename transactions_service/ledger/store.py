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
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import Engine

from ..extensions import db, run_statement
from .models import HOLD_EXPIRED

# A timestamp as the API shows it (RFC 3339 in UTC, microseconds, "Z"), formatted by PostgreSQL.
RFC3339 = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


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
    # The purchase a refund gives back and the usage a reversal gives back; None on every other row
    # (and in the idempotency records kept before these fields existed).
    refunds: str | None = None
    reverses: str | None = None
    # The caller's metadata (its JSON object, read into a dict) and reference; the same defaults for
    # records kept before they existed.
    metadata: dict[str, str] | None = None
    reference: str | None = None


# How each field of Transaction is read, with ``{t}`` where a table's alias may go (none, so that it
# serves in a SELECT and in the RETURNING clause of an UPDATE, or ``m.`` over a CTE's row), and the name
# it comes out under where that is not its own: a cast keeps its column's name; the formatted times get
# names of their own, which an ORDER BY on the real columns cannot mistake for them.
_TRANSACTION_SQL = {
    "id": ("{t}id::text", None),
    "user_id": ("{t}user_id::text", None),
    "type": ("{t}type::text", None),
    "amount": ("{t}amount::text", None),
    "credits": ("{t}credits", None),
    "description": ("{t}description", None),
    "status": ("{t}status::text", None),
    "created_at": (RFC3339.format("{t}created_at"), "created_at_text"),
    "updated_at": (RFC3339.format("{t}updated_at"), "updated_at_text"),
    "hold_expires_at": (
        f"CASE WHEN {{t}}status = 'pending' THEN {RFC3339.format('{t}hold_expires_at')} END", "hold_expires_at_text"
    ),
    "refunds": ("{t}refunds::text", None),
    "reverses": ("{t}reverses::text", None),
    "metadata": ("{t}metadata", None),
    "reference": ("{t}reference", None),
}
assert tuple(_TRANSACTION_SQL) == Transaction._fields
TRANSACTION_COLUMNS = ", ".join(
    sql.format(t="") + ("" if output is None else f" AS {output}") for sql, output in _TRANSACTION_SQL.values()
)
# The names those columns come out under, for selecting them again from a CTE.
_TRANSACTION_OUTPUT = [output or name for name, (_sql, output) in _TRANSACTION_SQL.items()]


def _transaction_json(t: str) -> str:
    """The transaction in row ``t`` of user_transactions as the API shows it, as JSON PostgreSQL builds.

    The same members, in the same order and from the same expressions, as the
    columns ``Transaction`` is read from, so an event's ``data`` is what a read
    of the transaction answered at that moment.
    """
    members = ", ".join(f"'{name}', {sql.format(t=f'{t}.')}" for name, (sql, _output) in _TRANSACTION_SQL.items())
    return f"json_build_object({members})"


class TransactionState(NamedTuple):
    """What explains a refused settlement: the row's status, type, owner and why it failed."""

    type: str
    user_id: uuid.UUID
    status: str
    failure_reason: str | None
    hold_expires_at: datetime | None


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


class HistoryFilter(NamedTuple):
    """Which of a user's transactions a history page shows: all, when every field is None."""

    type: str | None = None
    status: str | None = None
    reference: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    metadata: dict[str, str] | None = None  # every pair must match


# Each on the history index (user_id, created_at DESC, id DESC), as a range or a filter along it; a
# reference on its own unique index, which finds at most one row per type. ``{t}`` is the ledger row,
# ``{c}`` the row whose created_at the page is ordered by.
_HISTORY_CONDITIONS = {
    "type": "{t}type = %(type)s",
    "status": "{t}status = %(status)s",
    "reference": "{t}reference = %(reference)s",
    "created_after": "{c}created_at >= %(created_after)s",
    "created_before": "{c}created_at < %(created_before)s",
}
# The ledger row's columns read through an alias, for a statement over more than one table.
_ALIASED_COLUMNS = ", ".join(
    sql.format(t="t.") + f" AS {output or name}" for name, (sql, output) in _TRANSACTION_SQL.items()
)


@functools.cache
def _history_page(filtered: tuple[str, ...], after: bool, columns: str = _ALIASED_COLUMNS) -> str:
    conditions = ["t.user_id = %(user_id)s", *(_HISTORY_CONDITIONS[name].format(t="t.", c="t.") for name in filtered)]
    if after:
        conditions.append("(t.created_at, t.id) < (%(after_created_at)s, %(after_id)s)")
    return (
        f"SELECT {columns} FROM user_transactions AS t WHERE {' AND '.join(conditions)}"
        # The table's columns, named so: a bare "id" would be the text the select list makes of it,
        # which the index does not hold, and the page would be sorted again after the scan.
        " ORDER BY t.created_at DESC, t.id DESC LIMIT %(limit)s"
    )


@functools.cache
def _metadata_history_page(filtered: tuple[str, ...], pairs: int, after: bool, columns: str = _ALIASED_COLUMNS) -> str:
    """A page of the transactions carrying every pair: a range of the first pair's index (its rows are
    in the page's order), each further pair looked up by the transaction's primary key."""
    conditions = [
        "m.user_id = %(user_id)s", "m.key = %(key_0)s", "m.value = %(value_0)s",
        *(_HISTORY_CONDITIONS[name].format(t="t.", c="m.") for name in filtered),
        *(f"EXISTS (SELECT 1 FROM transaction_metadata AS m{i} WHERE m{i}.transaction_id = m.transaction_id"
          f" AND m{i}.key = %(key_{i})s AND m{i}.value = %(value_{i})s)" for i in range(1, pairs)),
    ]
    if after:
        conditions.append("(m.created_at, m.transaction_id) < (%(after_created_at)s, %(after_id)s)")
    return (
        f"SELECT {columns} FROM transaction_metadata AS m JOIN user_transactions AS t"
        f" ON t.id = m.transaction_id WHERE {' AND '.join(conditions)}"
        " ORDER BY m.created_at DESC, m.transaction_id DESC LIMIT %(limit)s"
    )


def _filtered(
    user_id: uuid.UUID, limit: int, only: HistoryFilter, after: Position | None, columns: str
) -> tuple[str, dict[str, Any]]:
    """The statement of a page of a user's history (``columns`` of each row) and its parameters."""
    params: dict[str, Any] = {"user_id": str(user_id), "limit": limit, **only._asdict()}
    pairs = list((params.pop("metadata") or {}).items())
    if after is not None:
        params.update(after_created_at=after.created_at, after_id=str(after.id))
    filtered = tuple(name for name in _HISTORY_CONDITIONS if params[name] is not None)
    if not pairs:
        return _history_page(filtered, after is not None, columns), params
    for i, (key, value) in enumerate(pairs):
        params.update({f"key_{i}": key, f"value_{i}": value})
    return _metadata_history_page(filtered, len(pairs), after is not None, columns), params


def history_page(
    engine: Engine | None,
    user_id: uuid.UUID,
    limit: int,
    *,
    only: HistoryFilter,
    after: Position | None,
) -> list[Transaction]:
    """Up to ``limit`` of a user's transactions, newest first, after a keyset position, on ``engine``."""
    statement, params = _filtered(user_id, limit, only, after, _ALIASED_COLUMNS)
    return _transactions(run_statement(statement, params, engine, repeatable=True))


# --- exports: a user's history as the lines of a file, a chunk at a time ------------------------


def _csv_text(value: str) -> str:
    """A text cell, quoted, with a leading ' where a spreadsheet would take it for a formula (OWASP)."""
    return (
        f"CASE WHEN {value} IS NULL THEN '' ELSE '\"' || CASE WHEN left({value}, 1)"
        f" IN ('=', '+', '-', '@', chr(9), chr(13)) THEN '''' ELSE '' END"
        f" || replace({value}, '\"', '\"\"') || '\"' END"
    )


# The export's columns: the CSV header, and each line's cells in this order.
EXPORT_COLUMNS = (
    "id", "created_at", "updated_at", "type", "status", "credits", "amount", "description", "reference",
    "metadata", "hold_expires_at", "refunds", "reverses", "user_id",
)
_TEXT_CELLS = {"description", "reference", "metadata"}


def _cell(name: str) -> str:
    value = f"({_TRANSACTION_SQL[name][0].format(t='t.')})::text"
    return _csv_text(value) if name in _TEXT_CELLS else f"coalesce({value}, '')"


# A line of each format: CSV cells (numbers bare, so that a spreadsheet reads them as numbers), or the
# transaction as the API shows it.
_EXPORT_LINES = {"csv": " || ',' || ".join(_cell(name) for name in EXPORT_COLUMNS), "jsonl": _transaction_json("t")}


class ExportChunk(NamedTuple):
    """Lines of an export, each ending in a line feed; how many; and the position of the last."""

    text: str
    rows: int
    last: Position | None


def export_chunk(
    engine: Engine | None, user_id: uuid.UUID, limit: int, *, only: HistoryFilter, after: Position | None, form: str
) -> ExportChunk:
    """Up to ``limit`` rows of the history after ``after``, as one text PostgreSQL wrote: a file's lines."""
    columns = f"({_EXPORT_LINES[form]})::text AS line, t.created_at AS at, t.id AS tid"
    page, params = _filtered(user_id, limit, only, after, columns)
    statement = (
        "SELECT coalesce(string_agg(line || chr(10), '' ORDER BY at DESC, tid DESC), ''), count(*),"
        f" (array_agg(at ORDER BY at, tid))[1], (array_agg(tid ORDER BY at, tid))[1] FROM ({page}) AS chunk"
    )
    text, rows, at, tid = run_statement(statement, params, engine, repeatable=True)[0]
    return ExportChunk(text, rows, None if at is None else Position(at, tid))


def count_history(engine: Engine | None, user_id: uuid.UUID, limit: int, *, only: HistoryFilter) -> int:
    """How many rows the history holds, counting no further than ``limit``."""
    page, params = _filtered(user_id, limit, only, None, "1 AS one")
    return run_statement(f"SELECT count(*) FROM ({page}) AS counted", params, engine, repeatable=True)[0][0]


_READ = f"SELECT {TRANSACTION_COLUMNS} FROM user_transactions WHERE id = %(id)s"
_BY_REFERENCE = (
    "SELECT id::text FROM user_transactions"
    " WHERE user_id = %(user_id)s AND reference = %(reference)s AND type = %(type)s::transaction_type"
)
_STATE = "SELECT type::text, user_id, status::text, failure_reason, hold_expires_at FROM user_transactions WHERE id = %(id)s"


def read(transaction_id: uuid.UUID) -> Transaction | None:
    return _first(Transaction, _READ, {"id": str(transaction_id)}, repeatable=True)


def by_reference(user_id: uuid.UUID, kind: str, reference: str) -> str | None:
    """The id of the user's transaction of this type with this reference, if there is one."""
    rows = run_statement(_BY_REFERENCE, {"user_id": str(user_id), "type": kind, "reference": reference},
                         repeatable=True)
    return rows[0][0] if rows else None


def state(transaction_id: uuid.UUID) -> TransactionState | None:
    return _first(TransactionState, _STATE, {"id": str(transaction_id)}, repeatable=True)


class Balance(NamedTuple):
    """A user's totals as of now: completed credits, and credits held by pending usage."""

    user_id: uuid.UUID
    balance: int
    held: int
    # Available credits by category, and the soonest-expiring lot with credits left (or None).
    paid: int = 0
    promotional: int = 0
    next_expiry_credits: int | None = None
    next_expiry_at: datetime | None = None

    @property
    def available(self) -> int:
        return self.balance - self.held


# The balance row, with what has lapsed and is not recorded yet counted as gone at once: holds past
# their expiry release their credits, and lots past theirs lose their unheld credits (and what a
# lapsed hold held on them). Available credits by category and the next expiry come from the lots.
_BALANCE = (
    "WITH lapsed_holds AS MATERIALIZED (SELECT p.lot_id, sum(p.held) AS held FROM user_transactions AS t"
    " JOIN lot_postings AS p ON p.transaction_id = t.id"
    " WHERE t.user_id = %(user_id)s AND t.status = 'pending' AND t.type = 'usage' AND t.hold_expires_at <= %(now)s"
    " GROUP BY p.lot_id HAVING sum(p.held) > 0),"
    " open_lots AS MATERIALIZED (SELECT l.category, l.expires_at, l.remaining + coalesce(h.held, 0) AS free,"
    " (l.expires_at IS NOT NULL AND l.expires_at <= %(now)s) AS lapsed FROM credit_lots AS l"
    " LEFT JOIN lapsed_holds AS h ON h.lot_id = l.id"
    " WHERE l.user_id = %(user_id)s AND (l.remaining > 0 OR h.held IS NOT NULL)),"
    " soonest AS (SELECT free, expires_at FROM open_lots WHERE NOT lapsed AND expires_at IS NOT NULL AND free > 0"
    " ORDER BY expires_at LIMIT 1)"
    " SELECT b.user_id,"
    " b.balance - coalesce((SELECT sum(free) FROM open_lots WHERE lapsed), 0),"
    " b.held - coalesce((SELECT sum(held) FROM lapsed_holds), 0),"
    " coalesce((SELECT sum(free) FROM open_lots WHERE NOT lapsed AND category = 'paid'), 0),"
    " coalesce((SELECT sum(free) FROM open_lots WHERE NOT lapsed AND category = 'promotional'), 0),"
    " (SELECT free FROM soonest), (SELECT expires_at FROM soonest)"
    " FROM user_balances AS b WHERE b.user_id = %(user_id)s"
)


def balance(user_id: uuid.UUID, now: datetime) -> Balance | None:
    return _first(Balance, _BALANCE, {"user_id": str(user_id), "now": now}, repeatable=True)


# --- reads over time: the books at an instant, a period's lines, usage spent (ledger/reports.py) --


class Books(NamedTuple):
    """A user's totals as recorded before an instant: completed credits, and credits held."""

    balance: int
    held: int


# The last of the user's postings stamped before the instant (their stamps are in write order), whose
# totals after it are the books then: one seek on ix_lot_postings_user_time.
_BOOKS = (
    "SELECT balance_after, held_after FROM lot_postings WHERE user_id = %(user_id)s AND created_at < %(at)s"
    " ORDER BY created_at DESC, id DESC LIMIT 1"
)


def books(user_id: uuid.UUID, at: datetime) -> Books:
    """The user's balance and held credits as recorded before ``at`` (0 and 0 before their first posting)."""
    return _first(Books, _BOOKS, {"user_id": str(user_id), "at": at}, repeatable=True) or Books(0, 0)


class MonthLines(NamedTuple):
    """What a period's postings did to a balance, per kind of entry (credits, signed), and the dollars."""

    purchases: int
    grants: int
    usage: int
    refunds: int
    reversals: int
    adjustments: int
    expirations: int
    carried_in: int
    amount_paid: str
    amount_refunded: str


# The postings stamped in [starts_at, ends_at), summed by their transaction's type; an opening lot's
# posting (no transaction: a balance from before lots, migration 0005) is carried in. The dollars are
# each purchase's and refund's own, once (each has one posting).
_LINES = (
    "WITH posted AS MATERIALIZED (SELECT p.credits, t.type::text AS kind, t.amount, t.id FROM lot_postings AS p"
    " LEFT JOIN user_transactions AS t ON t.id = p.transaction_id WHERE p.user_id = %(user_id)s"
    " AND p.created_at >= %(starts_at)s AND p.created_at < %(ends_at)s)"
    " SELECT " + ", ".join(
        f"coalesce(sum(credits) FILTER (WHERE kind {condition}), 0)" for condition in (
            "= 'purchase'", "= 'grant'", "= 'usage'", "= 'refund'", "= 'reversal'", "= 'adjustment'",
            "= 'expiration'", "IS NULL",
        )
    ) + ", (SELECT coalesce(sum(amount), 0)::text FROM (SELECT DISTINCT id, amount FROM posted"
    " WHERE kind = 'purchase') AS paid),"
    " (SELECT coalesce(sum(amount), 0)::text FROM (SELECT DISTINCT id, amount FROM posted WHERE kind = 'refund')"
    " AS refunded) FROM posted"
)


def month_lines(user_id: uuid.UUID, starts_at: datetime, ends_at: datetime) -> MonthLines:
    params = {"user_id": str(user_id), "starts_at": starts_at, "ends_at": ends_at}
    return _first(MonthLines, _LINES, params, repeatable=True)


class Piece(NamedTuple):
    """A range of one grain of the rollup: its periods from ``starts_at`` (inclusive) to ``ends_at``, counted
    in bucket ``bucket`` (``ledger/reports.py`` cuts each bucket into the fewest such pieces)."""

    minutes: int
    starts_at: datetime
    ends_at: datetime
    bucket: int


# Credits spent in each piece, each piece a range of the rollup's primary key (so the statement reads the
# rows of the periods asked for, however long the history): the total (key ''), or per value of a key.
_PIECES = (
    "unnest(%(minutes)s::int[], %(starts)s::text[]::timestamptz[], %(ends)s::text[]::timestamptz[],"
    " %(buckets)s::int[]) AS p (minutes, s, e, n) {join} LATERAL (SELECT value, credits FROM usage_rollup"
    " WHERE user_id = %(user_id)s AND key = %(key)s AND grain = p.minutes AND period >= p.s AND period < p.e) AS r"
    " ON true"
)
_SPENT_TOTAL = f"SELECT p.n, '', coalesce(sum(r.credits), 0)::bigint FROM {_PIECES.format(join='LEFT JOIN')} GROUP BY 1"
_SPENT_BY_VALUE = f"SELECT p.n, r.value, sum(r.credits)::bigint FROM {_PIECES.format(join='JOIN')} GROUP BY 1, 2"
# The values of a key with the most credits spent over all the pieces, most first.
_TOP_VALUES = (
    f"SELECT r.value FROM {_PIECES.format(join='JOIN')} GROUP BY r.value ORDER BY sum(r.credits) DESC, r.value"
    " LIMIT %(limit)s"
)


def _pieces(user_id: uuid.UUID, key: str, pieces: list[Piece]) -> dict[str, Any]:
    return {"user_id": str(user_id), "key": key, "minutes": [piece.minutes for piece in pieces],
            "starts": [piece.starts_at.isoformat() for piece in pieces],
            "ends": [piece.ends_at.isoformat() for piece in pieces], "buckets": [piece.bucket for piece in pieces]}


def spent(user_id: uuid.UUID, pieces: list[Piece], key: str = "") -> list[tuple[int, str, int]]:
    """(bucket, value, credits spent) per bucket the pieces make: the total, or per value of ``key``."""
    statement = _SPENT_BY_VALUE if key else _SPENT_TOTAL
    return [tuple(row) for row in run_statement(statement, _pieces(user_id, key, pieces), repeatable=True)]


def top_values(user_id: uuid.UUID, key: str, pieces: list[Piece], limit: int) -> list[str]:
    params = {**_pieces(user_id, key, pieces), "limit": limit}
    return [value for (value,) in run_statement(_TOP_VALUES, params, repeatable=True)]


class Lot(NamedTuple):
    id: uuid.UUID
    user_id: uuid.UUID
    transaction_id: uuid.UUID | None
    category: str
    credits: int
    remaining: int
    held: int
    priority: int
    expires_at: datetime | None
    cost_basis: Any
    created_at: datetime
    # active (credits left, not expired), expired, refunded (nothing left, and a refund took some), or
    # depleted (spent).
    status: str


_POSTED_BY = (
    "EXISTS (SELECT 1 FROM lot_postings AS p JOIN user_transactions AS t ON t.id = p.transaction_id"
    " WHERE p.lot_id = l.id AND t.type = '{}')"
)
_LOT_STATUS = (
    f"CASE WHEN l.expires_at <= %(now)s AND (l.remaining > 0 OR {_POSTED_BY.format('expiration')}) THEN 'expired'"
    f" WHEN l.remaining + l.held > 0 THEN 'active' WHEN {_POSTED_BY.format('refund')} THEN 'refunded'"
    " ELSE 'depleted' END"
)


@functools.cache
def _lots_page(active_only: bool, after: bool) -> str:
    conditions = ["l.user_id = %(user_id)s"]
    if active_only:
        conditions.append("l.remaining + l.held > 0 AND (l.expires_at IS NULL OR l.expires_at > %(now)s)")
    if after:
        conditions.append("(l.created_at, l.id) < (%(after_created_at)s, %(after_id)s)")
    return (
        "SELECT l.id, l.user_id, l.transaction_id, l.category::text, l.credits, l.remaining, l.held, l.priority,"
        f" l.expires_at, l.cost_basis, l.created_at, {_LOT_STATUS} FROM credit_lots AS l"
        f" WHERE {' AND '.join(conditions)} ORDER BY l.created_at DESC, l.id DESC LIMIT %(limit)s"
    )


def lots_page(user_id: uuid.UUID, limit: int, now: datetime, *, active_only: bool, after: Position | None) -> list[Lot]:
    """Up to ``limit`` of a user's lots, newest first, after a keyset position."""
    params: dict[str, Any] = {"user_id": str(user_id), "limit": limit, "now": now}
    if after is not None:
        params.update(after_created_at=after.created_at, after_id=str(after.id))
    rows = run_statement(_lots_page(active_only, after is not None), params, repeatable=True)
    return [Lot(*row) for row in rows]


class Posting(NamedTuple):
    """How a transaction changed one lot."""

    lot_id: uuid.UUID
    credits: int
    held: int
    created_at: datetime


_POSTINGS = (
    "SELECT lot_id, credits, held, created_at FROM lot_postings WHERE transaction_id = %(id)s ORDER BY id"
)


def postings(transaction_id: uuid.UUID | str) -> list[Posting]:
    return [Posting(*row) for row in run_statement(_POSTINGS, {"id": str(transaction_id)}, repeatable=True)]


class RefundLimits(NamedTuple):
    """How much of a purchase can still be refunded: credits left on its lot, and dollars."""

    remaining: int
    amount: str


_REFUND_LIMITS = (
    "SELECT coalesce((SELECT CASE WHEN l.expires_at <= %(now)s THEN 0 ELSE l.remaining END FROM credit_lots AS l"
    " WHERE l.user_id = p.user_id AND (l.transaction_id = p.id OR l.transaction_id IS NULL)"
    " ORDER BY l.transaction_id IS NULL LIMIT 1), 0), (p.amount - p.refunded_amount)::text"
    " FROM user_transactions AS p WHERE p.id = %(id)s"
)
_REVERSIBLE = "SELECT -credits - reversed_credits FROM user_transactions WHERE id = %(id)s"


def refund_limits(purchase_id: uuid.UUID, now: datetime) -> RefundLimits:
    """What a refund of this (completed) purchase may still take, as of ``now``: to explain a refusal."""
    return _first(RefundLimits, _REFUND_LIMITS, {"id": str(purchase_id), "now": now}, repeatable=True)


def reversible(usage_id: uuid.UUID) -> int:
    """How many of this (completed) usage's credits no reversal has given back yet: to explain a refusal."""
    return _value(_REVERSIBLE, {"id": str(usage_id)}, repeatable=True)


_USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = %(id)s)"


def user_exists(user_id: uuid.UUID) -> bool:
    return _value(_USER_EXISTS, {"id": str(user_id)}, repeatable=True)


# --- the event feed ------------------------------------------------------------------------------


class FeedPosition(NamedTuple):
    """Where a feed page ends: the writing transaction's id, and the event's position in the table."""

    xid: int
    position: int


class Event(NamedTuple):
    """An event as the feed shows it; ``data`` is JSON text, as it was written."""

    xid: int
    position: int
    id: str
    type: str
    user_id: str
    sequence: int
    created_at: str
    data: str


# Only events of transactions older than every transaction still running: a transaction that commits
# later than one with a larger id would otherwise have its events appear behind a reader's position.
VISIBLE_EVENTS = "xid < pg_snapshot_xmin(pg_current_snapshot())"


@functools.cache
def _events_page(by_type: bool, by_user: bool) -> str:
    conditions = ["(xid, position) > (%(xid)s::text::xid8, %(position)s)", VISIBLE_EVENTS]
    if by_type:
        conditions.append("type = ANY(%(types)s::text[])")
    if by_user:
        conditions.append("user_id = %(user_id)s")
    return (
        f"SELECT xid::text::bigint, position, id::text, type, user_id::text, sequence, {RFC3339.format('created_at')},"
        f" data::text FROM ledger_events WHERE {' AND '.join(conditions)} ORDER BY xid, position LIMIT %(limit)s"
    )


def events_page(after: FeedPosition, limit: int, *, types: list[str], user_id: uuid.UUID | None) -> list[Event]:
    """Up to ``limit`` events after ``after`` in feed order, of the given types (all when empty) and user."""
    params = {**after._asdict(), "limit": limit, "types": types, "user_id": None if user_id is None else str(user_id)}
    rows = run_statement(_events_page(bool(types), user_id is not None), params, repeatable=True)
    return [Event(*row) for row in rows]


# Where a relay of the feed (into JetStream, say) has got to: the last event it handed on.
_RELAY_POSITION = "SELECT after_xid, after_position FROM event_relays WHERE name = %(name)s"
_SAVE_RELAY_POSITION = (
    "INSERT INTO event_relays (name, after_xid, after_position) VALUES (%(name)s, %(xid)s, %(position)s)"
    " ON CONFLICT (name) DO UPDATE SET after_xid = excluded.after_xid, after_position = excluded.after_position,"
    " updated_at = now() WHERE (event_relays.after_xid, event_relays.after_position) < (excluded.after_xid,"
    " excluded.after_position)"
)


def relay_position(name: str) -> FeedPosition:
    """The last event the named relay handed on (the start of the feed when it has handed on none)."""
    return _first(FeedPosition, _RELAY_POSITION, {"name": name}, repeatable=True) or FeedPosition(0, 0)


def save_relay_position(name: str, position: FeedPosition) -> None:
    """Remember where the relay has got to; a position behind the one remembered changes nothing."""
    run_statement(_SAVE_RELAY_POSITION, {"name": name, **position._asdict()}, repeatable=True)


# One relay at a time publishes: it holds the lease, renewing it as it goes; another takes it over
# only once it has run out (a relay killed, or stalled for longer than the lease).
_TAKE_RELAY_LEASE = (
    "INSERT INTO event_relays AS r (name, after_xid, after_position, holder, lease_until)"
    " VALUES (%(name)s, 0, 0, %(holder)s, now() + make_interval(secs => %(seconds)s))"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until"
    " WHERE r.holder = excluded.holder OR r.holder IS NULL OR r.lease_until < now() RETURNING 1"
)
_RELEASE_RELAY_LEASE = (
    "UPDATE event_relays SET holder = NULL, lease_until = NULL WHERE name = %(name)s AND holder = %(holder)s"
)


def take_relay_lease(name: str, holder: str, seconds: float) -> bool:
    """Take or renew the named relay's lease for ``seconds``; False while another holder's runs."""
    return bool(run_statement(_TAKE_RELAY_LEASE, {"name": name, "holder": holder, "seconds": seconds},
                              repeatable=True))


def release_relay_lease(name: str, holder: str) -> None:
    run_statement(_RELEASE_RELAY_LEASE, {"name": name, "holder": holder}, repeatable=True)


_PRUNE_EVENTS = (
    "WITH old AS (SELECT position FROM ledger_events WHERE created_at < %(before)s LIMIT %(limit)s),"
    " pruned AS (DELETE FROM ledger_events AS e USING old WHERE e.position = old.position RETURNING 1)"
    " SELECT count(*) FROM pruned"
)


def prune_events(before: datetime, limit: int) -> int:
    """Delete up to ``limit`` events written before ``before``; returns how many."""
    return _value(_PRUNE_EVENTS, {"before": before, "limit": limit})


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


# The user's own low-balance threshold (null: none), on the balance row their writes lock, which a
# user who has not written yet gets now with nothing in it.
_SET_THRESHOLD = (
    "INSERT INTO user_balances AS b (user_id, balance, held, low_balance_own, low_balance_threshold)"
    " VALUES (%(id)s, 0, 0, true, %(threshold)s) ON CONFLICT (user_id) DO UPDATE"
    " SET low_balance_own = true, low_balance_threshold = excluded.low_balance_threshold"
)
_OWN_THRESHOLD = "SELECT low_balance_own, low_balance_threshold FROM user_balances WHERE user_id = %(id)s"


class Threshold(NamedTuple):
    own: bool
    threshold: int | None


def set_low_balance_threshold(user_id: uuid.UUID, threshold: int | None) -> None:
    run_statement(_SET_THRESHOLD, {"id": str(user_id), "threshold": threshold}, repeatable=True)


def low_balance_threshold(user_id: uuid.UUID) -> Threshold:
    """Whether the user has a threshold of their own, and which."""
    return _first(Threshold, _OWN_THRESHOLD, {"id": str(user_id)}, repeatable=True) or Threshold(False, None)


# --- lots: the order every debit takes credits in ------------------------------------------------

# Lower priority first; then the soonest to expire (never-expiring last); promotional before paid;
# then the oldest. The same for spends, holds and every other debit.
SPEND_ORDER = "priority, expires_at NULLS LAST, (category = 'paid'), created_at, id"
# The same order backwards: a reversal gives credits back to the lots its usage consumed, the last first.
LAST_SPENT_FIRST = "priority DESC, expires_at DESC NULLS FIRST, (category = 'paid') DESC, created_at DESC, id DESC"
# Each write stamps its postings no earlier than the user's latest (migration 0011), on the balance row it
# locks: so a user's postings are in time order, and the books at an instant are those before a point.
_STAMP = "posted_at = greatest(posted_at, {})"
# Every debit of a user's locks their balance row first (see _debit), and reads there the instant its
# postings will carry: a lot is spendable if it has not expired by then, so that no posting says it took
# from a lot after the lot's expiry, even when the write's own clock reads earlier.
_BALANCE_ROW = (
    "balance_row AS MATERIALIZED (SELECT balance, held, greatest(posted_at, %(created_at)s) AS at"
    " FROM user_balances WHERE user_id = %(user_id)s FOR UPDATE)"
)
_UNEXPIRED = "(expires_at IS NULL OR expires_at > (SELECT at FROM balance_row))"
# Each write numbers its events after the user's latest, on the balance row it locks (ADR 0006).
_NEXT_EVENT = "event_sequence = event_sequence + 1"
_EVENT_INSERT = "INSERT INTO ledger_events (type, user_id, sequence, data, created_at)"
# A user's low-balance threshold, read from their balance row: their own (PUT /api/users), or else the
# service's default (LOW_BALANCE_THRESHOLD); null: no alert.
_THRESHOLD = "CASE WHEN low_balance_own THEN low_balance_threshold ELSE %(low_balance_default)s::integer END"


def _falls_below(before: str, after: str, threshold: str = _THRESHOLD) -> str:
    """Whether available credits go from ``before``, at or above the threshold, to ``after``, below it."""
    return f"coalesce({before} >= {threshold} AND {after} < {threshold}, false)"


# A debit of %(needed)s available credits numbers one event, or two when it takes available credits
# below the threshold: balance.low follows the write's own (SET reads the row as it was, RETURNING as
# it is now). Every other write returns ``fell`` false.
_DEBIT_EVENTS = (
    f"event_sequence = event_sequence + 1 + {_falls_below('balance - held', 'balance - held - %(needed)s')}::integer"
)
_DEBITED = (
    f"balance, held, event_sequence, {_falls_below('balance - held + %(needed)s', 'balance - held')} AS fell,"
    f" {_THRESHOLD} AS threshold, posted_at"
)
# A balance.low event's data: the balance row ``b`` after the write, with the threshold it fell below.
_LOW_BALANCE_JSON = (
    "json_build_object('user_id', {user}::text, 'balance', {b}.balance, 'held', {b}.held,"
    " 'available', {b}.balance - {b}.held, 'threshold', {b}.threshold)"
)
# The balance.low event of a write whose ``applied`` row fell below the threshold.
_FELL = (
    f"low AS ({_EVENT_INSERT} SELECT 'balance.low', %(user_id)s::uuid, applied.event_sequence,"
    f" {_LOW_BALANCE_JSON.format(user='%(user_id)s', b='applied')}, %(created_at)s FROM new, applied WHERE applied.fell)"
)
# A user's lots whose unheld credits have expired but are not recorded as expired yet.
_LAPSED_LOTS = "SELECT 1 FROM credit_lots WHERE user_id = %(user_id)s AND remaining > 0 AND expires_at <= %(created_at)s"


def _debit(move: str, balance_change: str, posting: str) -> tuple[list[str], list[str]]:
    """The CTEs of a debit (spend or hold) of ``%(needed)s`` credits from the user's usable lots, in spend order.

    The balance row is locked first, then the lots, as every write of a user's
    does, so that concurrent writes serialise and cannot deadlock. Nothing is
    taken unless the usable lots (unexpired, with credits left) cover all of it:
    ``applied`` then returns no row, and neither does the statement.
    """
    before = [
        _BALANCE_ROW,
        "usable AS MATERIALIZED (SELECT id, remaining, priority, expires_at, category, created_at FROM credit_lots"
        f" WHERE user_id = %(user_id)s AND remaining > 0 AND {_UNEXPIRED}"
        " AND EXISTS (SELECT 1 FROM balance_row) FOR UPDATE)",
        "plan AS MATERIALIZED (SELECT id,"
        " greatest(0, least(remaining, %(needed)s - (sum(remaining) OVER spend_order - remaining))) AS take,"
        " least(sum(remaining) OVER spend_order, %(needed)s) AS through"
        " FROM usable WHERE (SELECT sum(remaining) FROM usable) >= %(needed)s"
        f" WINDOW spend_order AS (ORDER BY {SPEND_ORDER}))",
        f"took AS (UPDATE credit_lots AS l SET {move} FROM plan"
        " WHERE l.id = plan.id AND plan.take > 0 RETURNING l.id, plan.take, plan.through)",
        f"applied AS (UPDATE user_balances SET {balance_change}, {_DEBIT_EVENTS}, updated_at = now(),"
        f" {_STAMP.format('%(created_at)s')} WHERE user_id = %(user_id)s AND EXISTS (SELECT 1 FROM plan)"
        f" RETURNING {_DEBITED})",
    ]
    after = [
        "posted AS (INSERT INTO lot_postings"
        " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        f" SELECT new.id, took.id, %(user_id)s::uuid, {posting}, applied.posted_at FROM new, took, balance_row, applied"
        # In the order of the running totals, so that the statement's last posting carries its final ones.
        " ORDER BY took.through)",
        _FELL,
    ]
    return before, after


def _credit(source: str, lot: str) -> tuple[list[str], list[str]]:
    """The CTEs of a credit: the balance row (made on first use) grows, and a lot is made with a posting.

    ``source`` yields ``(owner, credits)`` and ``lot`` the rest of the lot's
    columns, as a SELECT over ``new`` (the transaction row the lot belongs to).
    """
    before = [
        "applied AS (INSERT INTO user_balances AS b (user_id, balance, held, event_sequence, posted_at)"
        f" SELECT owner, credits, 0, 1, %(created_at)s::timestamptz FROM ({source}) AS credited(owner, credits)"
        " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + excluded.balance,"
        " event_sequence = b.event_sequence + 1, updated_at = now(),"
        " posted_at = greatest(b.posted_at, excluded.posted_at)"
        " RETURNING b.user_id, b.balance, b.held, b.event_sequence, false AS fell, b.posted_at)",
    ]
    after = [
        "lot AS (INSERT INTO credit_lots"
        " (id, user_id, transaction_id, category, credits, remaining, priority, expires_at, cost_basis, created_at)"
        f" {lot} RETURNING id, user_id, credits, created_at)",
        "posted AS (INSERT INTO lot_postings"
        " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT new.id, lot.id, lot.user_id, lot.credits, 0, applied.balance, applied.held, applied.posted_at"
        " FROM new, lot, applied)",
    ]
    return before, after


def _refund() -> tuple[list[str], list[str]]:
    """The CTEs of a refund of ``%(needed)s`` credits and ``%(amount)s`` dollars of purchase ``%(refunds)s``.

    The credits leave the purchase's lot (a purchase completed before lots
    existed gives back from the user's opening lot); only its unheld,
    unexpired credits can leave. The purchase row keeps the dollars refunded
    so far. The balance row is locked first, then the purchase, then the lot,
    and each is read as it is now (FOR UPDATE), so that concurrent refunds of
    one purchase serialise and the second sees what the first took. Nothing
    changes unless both limits hold: ``plan`` is then empty, and so is the
    statement's result.
    """
    before = [
        _BALANCE_ROW,
        "purchase AS MATERIALIZED (SELECT id FROM user_transactions WHERE id = %(refunds)s"
        " AND user_id = %(user_id)s AND type = 'purchase' AND status = 'completed'"
        " AND refunded_amount + %(amount)s <= amount AND EXISTS (SELECT 1 FROM balance_row) FOR UPDATE)",
        "target AS MATERIALIZED (SELECT id, remaining, expires_at FROM credit_lots WHERE user_id = %(user_id)s"
        " AND (transaction_id = %(refunds)s OR transaction_id IS NULL) AND EXISTS (SELECT 1 FROM purchase)"
        " ORDER BY transaction_id IS NULL LIMIT 1 FOR UPDATE)",
        f"plan AS MATERIALIZED (SELECT id FROM target WHERE remaining >= %(needed)s AND {_UNEXPIRED})",
        "took AS (UPDATE credit_lots AS l SET remaining = l.remaining - %(needed)s FROM plan WHERE l.id = plan.id)",
        "counted AS (UPDATE user_transactions SET refunded_amount = refunded_amount + %(amount)s"
        " WHERE id = %(refunds)s AND EXISTS (SELECT 1 FROM plan))",
        f"applied AS (UPDATE user_balances SET balance = balance - %(needed)s, {_DEBIT_EVENTS}, updated_at = now(),"
        f" {_STAMP.format('%(created_at)s')} WHERE user_id = %(user_id)s AND EXISTS (SELECT 1 FROM plan)"
        f" RETURNING {_DEBITED})",
    ]
    after = [
        "posted AS (INSERT INTO lot_postings"
        " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT new.id, plan.id, %(user_id)s::uuid, -%(needed)s, 0, balance_row.balance - %(needed)s,"
        " balance_row.held, applied.posted_at FROM new, plan, balance_row, applied)",
        _FELL,
    ]
    return before, after


def _reversal() -> tuple[list[str], list[str]]:
    """The CTEs of a reversal of ``%(credits)s`` credits of usage ``%(reverses)s``.

    The credits go back to the lots the usage consumed, the last consumed
    first, each at most what the usage took from it less what earlier
    reversals of the usage gave it (their postings). The usage row (locked,
    after the balance row) keeps the credits reversed so far: so two
    reversals never give the same credits back, and none gives a lot more
    than the usage took from it, whatever order the lots are in by now. A usage recorded
    before lots existed consumed no lot: its credits come back as a paid,
    never-expiring lot of their own, as its opening lot was. A lot that has
    expired since takes the credits back and lapses at once (the caller
    records its expiry).
    """
    before = [
        _BALANCE_ROW,
        "usage AS MATERIALIZED (SELECT id FROM user_transactions WHERE id = %(reverses)s"
        " AND user_id = %(user_id)s AND type = 'usage' AND status = 'completed'"
        " AND reversed_credits + %(credits)s <= -credits AND EXISTS (SELECT 1 FROM balance_row) FOR UPDATE)",
        "consumed AS MATERIALIZED (SELECT l.id, -sum(p.credits) AS took,"
        " l.priority, l.expires_at, l.category, l.created_at FROM lot_postings AS p JOIN credit_lots AS l ON l.id = p.lot_id"
        " WHERE p.transaction_id = %(reverses)s AND EXISTS (SELECT 1 FROM usage) GROUP BY l.id HAVING sum(p.credits) < 0)",
        "given AS MATERIALIZED (SELECT p.lot_id, sum(p.credits) AS back FROM user_transactions AS r"
        " JOIN lot_postings AS p ON p.transaction_id = r.id WHERE r.reverses = %(reverses)s"
        " AND EXISTS (SELECT 1 FROM usage) GROUP BY p.lot_id)",
        # What each lot may still get back, filled the last spent first.
        "plan AS MATERIALIZED (SELECT id,"
        " least(room, greatest(0, %(credits)s - (sum(room) OVER last_first - room))) AS give FROM"
        " (SELECT c.*, c.took - coalesce(g.back, 0) AS room FROM consumed AS c LEFT JOIN given AS g ON g.lot_id = c.id)"
        f" AS open WINDOW last_first AS (ORDER BY {LAST_SPENT_FIRST}))",
        "returned AS (UPDATE credit_lots AS l SET remaining = l.remaining + plan.give FROM plan"
        " WHERE l.id = plan.id AND plan.give > 0 RETURNING l.id, plan.give)",
        "counted AS (UPDATE user_transactions SET reversed_credits = reversed_credits + %(credits)s"
        " WHERE id = %(reverses)s AND EXISTS (SELECT 1 FROM usage))",
        f"applied AS (UPDATE user_balances SET balance = balance + %(credits)s, {_NEXT_EVENT}, updated_at = now(),"
        f" {_STAMP.format('%(created_at)s')} WHERE user_id = %(user_id)s AND EXISTS (SELECT 1 FROM usage)"
        " RETURNING balance, held, event_sequence, false AS fell, posted_at)",
    ]
    after = [
        "fresh AS (INSERT INTO credit_lots (id, user_id, transaction_id, category, credits, remaining, created_at)"
        " SELECT gen_random_uuid(), %(user_id)s::uuid, new.id, 'paid', %(credits)s, %(credits)s, %(created_at)s"
        " FROM new WHERE NOT EXISTS (SELECT 1 FROM consumed) RETURNING id, credits AS give)",
        "posted AS (INSERT INTO lot_postings"
        " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT new.id, back.id, %(user_id)s::uuid, back.give, 0, balance_row.balance + back.through,"
        " balance_row.held, applied.posted_at FROM new, balance_row, applied,"
        " (SELECT id, give, sum(give) OVER (ORDER BY id) AS through FROM"
        " (SELECT id, give FROM returned UNION ALL SELECT id, give FROM fresh) AS lots) AS back ORDER BY back.through)",
    ]
    return before, after


# The balance effect of a new ledger row: the CTEs before the row's insert (ending in ``applied``,
# which returns a row when the effect applied) and after it (the lots' postings).
EFFECTS = {
    # Completed usage: spend from the lots in spend order.
    "spend": _debit(
        "remaining = l.remaining - plan.take",
        "balance = balance - %(needed)s",
        "-took.take, 0, balance_row.balance - took.through, balance_row.held",
    ),
    # Pending usage: hold on the lots in spend order (its inverses: _SETTLE's consume and release,
    # and the release of lapsed holds).
    "hold": _debit(
        "remaining = l.remaining - plan.take, held = l.held + plan.take",
        "held = held + %(needed)s",
        "0, took.take, balance_row.balance, balance_row.held + took.through",
    ),
    # Refund: the purchase's lot gives its credits back.
    "refund": _refund(),
    # Reversal: the usage's lots get their credits back.
    "reversal": _reversal(),
    # Completed purchase, grant, or positive adjustment: a new lot.
    "credit": _credit(
        "VALUES (%(user_id)s::uuid, %(credits)s::integer)",
        "SELECT %(lot_id)s::uuid, %(user_id)s::uuid, new.id, %(lot_category)s::lot_category, %(credits)s,"
        " %(credits)s, %(lot_priority)s, %(lot_expires_at)s::timestamptz, %(cost_basis)s, %(created_at)s FROM new",
    ),
}

_NEW_ROW = (
    "%(id)s::uuid, %(user_id)s::uuid, %(type)s::transaction_type, %(amount)s::numeric, %(credits)s::integer,"
    " %(description)s::text, %(status)s::transaction_status, %(created_at)s::timestamptz,"
    " %(created_at)s::timestamptz, %(hold_expires_at)s::timestamptz, %(lot_expires_at)s::timestamptz,"
    " %(lot_priority)s::smallint, %(lot_category)s::lot_category, %(refunds)s::uuid, %(reverses)s::uuid,"
    " %(metadata_json)s::json, %(reference)s::text"
)
_LEDGER_COLUMNS = (
    "id, user_id, type, amount, credits, description, status, created_at, updated_at, hold_expires_at,"
    " lot_expires_at, lot_priority, lot_category, refunds, reverses, metadata, reference"
)


class Recorded(NamedTuple):
    """A ledger row just inserted, and whether the user has lots whose expiry is still to be recorded."""

    id: str
    lapsed_lots: bool


# A row with no balance effect (a pending purchase, a failed one) still numbers its event on the
# balance row, which its user then has from their first write on.
_EVENT_ONLY = [
    "applied AS (INSERT INTO user_balances AS b (user_id, balance, held, event_sequence)"
    " VALUES (%(user_id)s::uuid, 0, 0, 1) ON CONFLICT (user_id) DO UPDATE SET event_sequence = b.event_sequence + 1"
    " RETURNING b.event_sequence, false AS fell)"
]


# The pairs of a write's metadata, into the index a filtered history reads (models.TransactionMetadata).
_LABELLED = (
    "labelled AS (INSERT INTO transaction_metadata (transaction_id, key, user_id, value, created_at)"
    " SELECT new.id, m.key, %(user_id)s::uuid, m.value, %(created_at)s::timestamptz"
    " FROM new, json_each_text(%(metadata_json)s::json) AS m)"
)


# --- many writes in one transaction (an atomic batch) ----------------------------------------------

# Every user's balance row first, made where missing, then locked, in user-id order: a transaction that
# writes for several users holds their rows until it ends, and two that took them in other orders could
# deadlock. (A single write holds one, for one statement.)
_MADE_BALANCES = (
    "INSERT INTO user_balances (user_id) SELECT id FROM users WHERE id = ANY(%(users)s::text[]::uuid[])"
    " ORDER BY id ON CONFLICT (user_id) DO NOTHING"
)
_LOCKED_BALANCES = (
    "SELECT user_id FROM user_balances WHERE user_id = ANY(%(users)s::text[]::uuid[]) ORDER BY user_id FOR UPDATE"
)


def lock_balances(user_ids: list[str]) -> None:
    """Take the users' balance rows for the rest of the transaction (``extensions.one_transaction``)."""
    params = {"users": sorted(user_ids)}
    run_statement(_MADE_BALANCES, params)
    run_statement(_LOCKED_BALANCES, params)


# --- the usage rollup: credits spent per user and quarter hour (models.UsageRollup) ----------------

# The rollup's grains, in minutes, finest first: quarter hours (every zone's midnight is the start of one),
# hours, quarter days and UTC days, so that a summary reads the coarsest periods a bucket holds whole
# (``ledger/reports.py``).
GRAINS = (15, 60, 360, 1440)
GRAIN_ROWS = (
    "(VALUES (15, interval '15 minutes'), (60, interval '1 hour'), (360, interval '6 hours'), (1440, interval '1 day'))"
    " AS g (minutes, width)"
)
# Where the periods are counted from: in the SQL that keeps them, and for ``reports.pieces`` that reads them.
PERIOD_ORIGIN = datetime(2000, 1, 1, tzinfo=timezone.utc)
PERIOD = f"date_bin({{width}}, {{moment}}, timestamptz '{PERIOD_ORIGIN.isoformat()}')"
# The pairs a spend counts under: the total (''), and each of its own pairs whose key is grouped by.
_TOTAL_AND = (
    "SELECT '', '' UNION ALL SELECT key, value FROM ({}) AS pairs (key, value) WHERE key = ANY(%(group_keys)s::text[])"
)


def _rolled(owner: str, made_at: str, spent: str, pairs: str, rows: str, *, summed_where: str | None = None) -> str:
    """The CTE adding ``spent`` credits to the rollup, in each grain's period of ``made_at``, for each of
    ``pairs`` (which may read ``rows``).

    With ``summed_where``, the rows of that condition, several of a user's and
    cell's among them (a batch's), are summed per cell first: one statement may
    not change a row twice.
    """
    credits, tail = spent, ""
    if summed_where is not None:
        credits, tail = f"sum({spent})", f" WHERE {summed_where} GROUP BY 1, 2, 3, 4, 5"
    return (
        "rolled AS (INSERT INTO usage_rollup AS r (user_id, key, grain, period, value, credits)"
        f" SELECT {owner}, k.key, g.minutes, {PERIOD.format(width='g.width', moment=made_at)}, k.value, {credits}"
        f" FROM {rows}, LATERAL ({_TOTAL_AND.format(pairs)}) AS k (key, value), {GRAIN_ROWS}{tail}"
        " ON CONFLICT (user_id, key, grain, period, value) DO UPDATE SET credits = r.credits + excluded.credits)"
    )


# A completed usage counts its credits under its own pairs; a reversal takes back its credits under the
# pairs of the usage it reverses. Both after the row (``new``), so after the balance row's lock.
_ROLLED = {
    "spend": _rolled("%(user_id)s::uuid", "%(created_at)s::timestamptz", "%(needed)s",
                     "SELECT * FROM json_each_text(%(metadata_json)s::json)", "new"),
    "reversal": _rolled("%(user_id)s::uuid", "%(created_at)s::timestamptz", "-%(credits)s",
                        "SELECT key, value FROM transaction_metadata WHERE transaction_id = %(reverses)s", "new"),
}


def rolls_up(kind: str, effect: str | None) -> bool:
    """Whether a new row of this type and effect changes the credits spent: a completed usage, a reversal."""
    return (kind, effect) in (("usage", "spend"), ("reversal", "reversal"))


@functools.cache
def _record(effect: str | None, keyed: bool, labelled: bool, rolled: bool) -> str:
    before, after = EFFECTS[effect] if effect is not None else (_EVENT_ONLY, [])
    parts = [
        *before,
        f"new AS (INSERT INTO user_transactions ({_LEDGER_COLUMNS}) SELECT {_NEW_ROW} FROM applied RETURNING id)",
        *after,
        *([_LABELLED] if labelled else []),
        *([_ROLLED[effect]] if rolled else []),
        f"created AS ({_EVENT_INSERT} SELECT 'transaction.created', %(user_id)s::uuid,"
        " applied.event_sequence - applied.fell::integer, %(event)s::json, %(created_at)s FROM new, applied)",
    ]
    if keyed:
        parts.append(
            "claim AS (INSERT INTO idempotency_keys"
            " (caller, key, request_hash, status_code, response_body, transaction_id, user_id)"
            " SELECT %(caller)s, %(key)s, %(request_hash)s, 201, %(snapshot)s, id, %(user_id)s::uuid FROM new)"
        )
    return f"WITH {', '.join(parts)} SELECT id::text, EXISTS ({_LAPSED_LOTS}) FROM new"


def record(row: dict[str, Any], effect: str | None, claim: Claim | None, shown: str) -> Recorded | None:
    """Insert a ledger row with its balance effect, its event, and the key's record, in one statement.

    ``shown`` is the transaction as the API shows it (JSON): the event's data and the key's record.

    ``row`` holds the ledger columns (``_NEW_ROW``), ``needed`` (the credits a
    spend or hold takes), and for a credit the new lot's ``lot_id`` and
    ``cost_basis``. With an effect, the row is inserted only if the effect
    applied: None means the credits were not available (or the user has no
    balance row). The key's record is inserted from the ledger row's RETURNING,
    so it exists exactly when the row does; a key used before fails the
    statement on the record's primary key, writing nothing, when the effect
    applied (``idempotency`` tells that apart). With a key, the statement is
    safe to run again on a fresh connection: a repeat is a replay.
    """
    params = {**row, "event": shown}
    if claim is not None:
        params.update(claim._asdict(), snapshot=shown)
    statement = _record(effect, claim is not None, row["metadata_json"] != "{}", rolls_up(row["type"], effect))
    return _first(Recorded, statement, params, repeatable=claim is not None)


# --- many debits in one statement (a batch's usage, spends and holds: ledger/batches.py) ----------

# Each item's columns, one array per column, in item order (``ord``). Every item is keyed. An item is a
# spend (completed usage) or a hold (pending usage, with the instant its hold lapses).
_DEBIT_ITEMS = (
    "items AS MATERIALIZED (SELECT * FROM unnest(%(ords)s::integer[], %(ids)s::text[]::uuid[],"
    " %(users)s::text[]::uuid[], %(needed)s::integer[], %(holds)s::boolean[], %(hold_expires)s::timestamptz[],"
    " %(amounts)s::numeric[], %(descriptions)s::text[], %(metadata)s::text[], %(references)s::text[],"
    " %(shown)s::text[], %(keys)s::text[], %(hashes)s::text[])"
    " AS i (ord, id, user_id, needed, holds, hold_expires_at, amount, description, metadata, reference, shown,"
    " key, request_hash))"
)
# The balance rows first, in user-id order (as lock_balances takes them), then every lot with credits
# left of those users; each user's instant is the one their postings will carry (see _BALANCE_ROW).
_DEBIT_LOCKS = [
    "balance_rows AS MATERIALIZED (SELECT user_id, balance, held, event_sequence,"
    f" greatest(posted_at, %(created_at)s::timestamptz) AS at, {_THRESHOLD} AS threshold FROM user_balances"
    " WHERE user_id = ANY(%(distinct_users)s::text[]::uuid[]) ORDER BY user_id FOR UPDATE)",
    "locked AS MATERIALIZED (SELECT id, user_id, remaining, priority, expires_at, category, created_at"
    " FROM credit_lots WHERE user_id = ANY(%(distinct_users)s::text[]::uuid[]) AND remaining > 0"
    " AND EXISTS (SELECT 1 FROM balance_rows) FOR UPDATE)",
]
# The plan. A user's usable lots in spend order, each covering the interval [through - remaining, through)
# of what they hold together; a user's items in item order, each wanting [upto - needed, upto) of them (a
# spend and a hold alike take credits a lot has left). An item is a candidate until the first of its
# user's items whose key is recorded already (a replay, or a key in another request: those are answered
# one by one); a candidate is accepted if what it and the candidates before it want fits in the usable
# lots. So each user's accepted items are a prefix of their items, each applied as if alone after the
# ones before it, and each takes from a lot the overlap of the two intervals. ``spent`` and ``reserved``
# are what the user's items up to each one spend and hold: the totals after it.
_DEBIT_PLAN = [
    "usable AS MATERIALIZED (SELECT l.id, l.user_id, l.remaining,"
    f" sum(l.remaining) OVER (PARTITION BY l.user_id ORDER BY {SPEND_ORDER}) AS through"
    " FROM locked AS l JOIN balance_rows AS b USING (user_id) WHERE l.expires_at IS NULL OR l.expires_at > b.at)",
    "stale AS MATERIALIZED (SELECT i.user_id, min(i.ord) AS ord FROM items AS i JOIN idempotency_keys AS k"
    " ON k.caller = %(caller)s AND k.key = i.key GROUP BY i.user_id)",
    "candidates AS MATERIALIZED (SELECT i.*, sum(i.needed) OVER upto_here AS upto,"
    " sum(i.needed) FILTER (WHERE NOT i.holds) OVER upto_here AS spent,"
    " sum(i.needed) FILTER (WHERE i.holds) OVER upto_here AS reserved"
    " FROM items AS i JOIN balance_rows USING (user_id) LEFT JOIN stale USING (user_id)"
    " WHERE stale.ord IS NULL OR i.ord < stale.ord WINDOW upto_here AS (PARTITION BY i.user_id ORDER BY i.ord))",
    "accepted AS MATERIALIZED (SELECT c.*, c.upto - c.needed AS since,"
    " row_number() OVER (PARTITION BY c.user_id ORDER BY c.ord) AS rank FROM candidates AS c"
    " JOIN (SELECT user_id, sum(remaining) AS held_together FROM usable GROUP BY user_id) AS u USING (user_id)"
    " WHERE c.upto <= u.held_together)",
    # Each item's part of each lot, with the user's totals after it: the postings in item order, each
    # item's in the order of the lots, so that a user's last posting carries their final totals.
    "takes AS MATERIALIZED (SELECT t.*,"
    " b.balance - coalesce(sum(t.take) FILTER (WHERE NOT t.holds) OVER after_it, 0) AS balance_after,"
    " b.held + coalesce(sum(t.take) FILTER (WHERE t.holds) OVER after_it, 0) AS held_after, b.at"
    " FROM (SELECT a.ord, a.id AS transaction_id, u.id AS lot_id, a.user_id, a.holds,"
    " least(a.upto, u.through) - greatest(a.since, u.through - u.remaining) AS take,"
    " least(a.upto, u.through) AS through FROM accepted AS a JOIN usable AS u"
    " ON u.user_id = a.user_id AND u.through > a.since AND u.through - u.remaining < a.upto) AS t"
    " JOIN balance_rows AS b USING (user_id) WINDOW after_it AS (PARTITION BY t.user_id ORDER BY t.ord, t.through))",
    # Each accepted item with its events' numbers: its transaction.created after the events of the items
    # before it, then its balance.low when it is the one that takes available credits below the threshold.
    "sequenced AS MATERIALIZED (SELECT a.*, b.event_sequence + a.rank"
    f" + {_falls_below('b.balance - b.held', 'b.balance - b.held - a.since', 'b.threshold')}::integer AS sequence,"
    f" {_falls_below('b.balance - b.held - a.since', 'b.balance - b.held - a.upto', 'b.threshold')} AS fell,"
    " b.balance - coalesce(a.spent, 0) AS balance, b.held + coalesce(a.reserved, 0) AS held, b.threshold, b.at"
    " FROM accepted AS a JOIN balance_rows AS b USING (user_id))",
]
_DEBIT_WRITES = [
    "took AS (UPDATE credit_lots AS l SET remaining = l.remaining - t.take, held = l.held + t.reserved"
    " FROM (SELECT lot_id, sum(take) AS take, coalesce(sum(take) FILTER (WHERE holds), 0) AS reserved"
    " FROM takes GROUP BY lot_id) AS t WHERE l.id = t.lot_id)",
    "applied AS (UPDATE user_balances AS ub SET balance = ub.balance - s.spent, held = ub.held + s.reserved,"
    " event_sequence = s.last_sequence, updated_at = now(), posted_at = s.at"
    " FROM (SELECT user_id, coalesce(sum(needed) FILTER (WHERE NOT holds), 0) AS spent,"
    " coalesce(sum(needed) FILTER (WHERE holds), 0) AS reserved, max(sequence + fell::integer) AS last_sequence,"
    " max(at) AS at FROM sequenced GROUP BY user_id) AS s"
    # The batch's users again: the rows by their key, not a scan of every balance.
    " WHERE ub.user_id = ANY(%(distinct_users)s::text[]::uuid[]) AND ub.user_id = s.user_id)",
    f"new AS (INSERT INTO user_transactions ({_LEDGER_COLUMNS}) SELECT id, user_id, 'usage'::transaction_type,"
    " amount, -needed, description, (CASE WHEN holds THEN 'pending' ELSE 'completed' END)::transaction_status,"
    " %(created_at)s::timestamptz, %(created_at)s::timestamptz, hold_expires_at, NULL, NULL, NULL, NULL, NULL,"
    " metadata::json, reference FROM accepted ORDER BY ord)",
    "posted AS (INSERT INTO lot_postings"
    " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
    " SELECT transaction_id, lot_id, user_id, CASE WHEN holds THEN 0 ELSE -take END,"
    " CASE WHEN holds THEN take ELSE 0 END, balance_after, held_after, at FROM takes ORDER BY ord, through)",
    "labelled AS (INSERT INTO transaction_metadata (transaction_id, key, user_id, value, created_at)"
    " SELECT a.id, m.key, a.user_id, m.value, %(created_at)s::timestamptz"
    " FROM accepted AS a, json_each_text(a.metadata::json) AS m)",
    # What the spends spent (a hold counts when it is settled).
    _rolled("a.user_id", "%(created_at)s::timestamptz", "a.needed", "SELECT * FROM json_each_text(a.metadata::json)",
            "accepted AS a", summed_where="NOT a.holds"),
    f"events AS ({_EVENT_INSERT} SELECT type, user_id, sequence, data, %(created_at)s::timestamptz FROM ("
    " SELECT 'transaction.created' AS type, user_id, sequence, shown::json AS data, ord FROM sequenced"
    f" UNION ALL SELECT 'balance.low', user_id, sequence + 1, {_LOW_BALANCE_JSON.format(user='s.user_id', b='s')}, ord"
    " FROM sequenced AS s WHERE s.fell) AS e ORDER BY ord, sequence)",
    "claims AS (INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id,"
    " user_id) SELECT %(caller)s, key, request_hash, 201, shown, id, user_id FROM accepted)",
]


_DEBIT_BATCH = (
    f"WITH {', '.join([_DEBIT_ITEMS, *_DEBIT_LOCKS, *_DEBIT_PLAN, *_DEBIT_WRITES])}"
    " SELECT (SELECT coalesce(array_agg(ord), '{}') FROM accepted),"
    " (SELECT coalesce(array_agg(DISTINCT l.user_id::text), '{}') FROM locked AS l JOIN balance_rows AS b"
    " USING (user_id) WHERE l.expires_at <= b.at)"
)


class DebitedBatch(NamedTuple):
    """Which items of a batch of debits were applied (their ``ord``), and the users with lapsed lots."""

    applied: list[int]
    lapsed_users: list[str]


def debit_batch(items: dict[str, list[Any]], caller: str, now: datetime, low_balance_default: int | None,
                group_keys: list[str]) -> DebitedBatch:
    """Apply a batch's usage items (spends and holds), each keyed, in one statement: for each user, the
    longest prefix of their items that applies as if each were alone, after the ones before it
    (``_DEBIT_PLAN``).

    ``items`` holds one list per column of ``_DEBIT_ITEMS``. An item not applied
    wrote nothing; its key may be recorded, or its credits not there, and the
    caller answers it (and its user's later items) one by one. Safe to run
    again: a key recorded by a first run stops its user's items here.
    """
    params = {**items, "distinct_users": sorted(set(items["users"])), "caller": caller, "created_at": now,
              "low_balance_default": low_balance_default, "group_keys": group_keys}
    return _first(DebitedBatch, _DEBIT_BATCH, params, repeatable=True)


# --- settling a pending transaction: the inverses of hold and of a pending purchase --------------

# Moves one pending row of an allowed type (the caller's, decided before this runs) whose hold
# has not lapsed. A usage then consumes (completed) or releases (failed) the credits its hold put
# on each lot; a completed purchase makes its lot. The transaction row is locked first, then the
# balance row, then the lots, as when lapsed holds are released, so that the two cannot deadlock.
_SETTLE_PARTS = [
    "moved AS (UPDATE user_transactions SET status = %(status)s::transaction_status,"
    " updated_at = greatest(%(now)s, created_at)"
    " WHERE id = %(id)s AND status = 'pending' AND type::text = ANY(%(types)s::text[])"
    " AND (hold_expires_at IS NULL OR hold_expires_at > %(now)s)"
    f" RETURNING {TRANSACTION_COLUMNS}, user_id AS owner, type AS kind, credits AS delta, amount AS paid, created_at AS made_at,"
    f" lot_category, lot_priority, lot_expires_at, {_transaction_json('user_transactions')} AS shown)",
    "balance_row AS MATERIALIZED (SELECT b.balance, b.held FROM user_balances AS b JOIN moved ON b.user_id = moved.owner"
    " WHERE moved.kind = 'usage' FOR UPDATE OF b)",
    "held_lots AS MATERIALIZED (SELECT lot_id, sum(held) AS held FROM lot_postings"
    " WHERE transaction_id = %(id)s AND EXISTS (SELECT 1 FROM balance_row) GROUP BY lot_id HAVING sum(held) > 0)",
    "locked AS MATERIALIZED (SELECT l.id FROM credit_lots AS l JOIN held_lots ON held_lots.lot_id = l.id"
    " ORDER BY l.id FOR UPDATE OF l)",
    "hold_plan AS MATERIALIZED (SELECT h.lot_id, h.held, sum(h.held) OVER (ORDER BY h.lot_id) AS through"
    " FROM held_lots AS h JOIN locked ON locked.id = h.lot_id)",
    "returned AS (UPDATE credit_lots AS l SET held = l.held - hold_plan.held,"
    " remaining = l.remaining + CASE WHEN %(status)s = 'failed' THEN hold_plan.held ELSE 0 END"
    " FROM hold_plan WHERE l.id = hold_plan.lot_id)",
    "consume_or_release AS (UPDATE user_balances AS b SET held = b.held + m.delta,"
    " balance = b.balance + CASE WHEN %(status)s = 'completed' THEN m.delta ELSE 0 END,"
    " event_sequence = b.event_sequence + 1, updated_at = now(), posted_at = greatest(b.posted_at, %(now)s)"
    # After balance_row has locked the row: the order of a statement's CTEs is only what they read.
    " FROM moved AS m WHERE m.kind = 'usage' AND b.user_id = m.owner AND EXISTS (SELECT 1 FROM balance_row)"
    " RETURNING b.event_sequence, b.posted_at)",
    "hold_posted AS (INSERT INTO lot_postings"
    " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
    " SELECT m.id::uuid, p.lot_id, m.owner, CASE WHEN %(status)s = 'completed' THEN -p.held ELSE 0 END, -p.held,"
    " b.balance - CASE WHEN %(status)s = 'completed' THEN p.through ELSE 0 END, b.held - p.through, c.posted_at"
    " FROM moved AS m, hold_plan AS p, balance_row AS b, consume_or_release AS c ORDER BY p.through)",
    # A usage completed counts as spent when it was made (after its balance row's lock, as in _record).
    _rolled("m.owner", "m.made_at", "-m.delta",
            "SELECT key, value FROM transaction_metadata WHERE transaction_id = %(id)s",
            "moved AS m JOIN consume_or_release ON %(status)s = 'completed'"),
    "credited AS (INSERT INTO user_balances AS b (user_id, balance, held, event_sequence, posted_at)"
    " SELECT owner, delta, 0, 1, %(now)s FROM moved WHERE kind = 'purchase' AND %(status)s = 'completed'"
    " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + excluded.balance,"
    " event_sequence = b.event_sequence + 1, updated_at = now(), posted_at = greatest(b.posted_at, excluded.posted_at)"
    " RETURNING b.balance, b.held, b.event_sequence, b.posted_at)",
    # A failed purchase changes no balance, but numbers its event on the balance row all the same.
    "numbered AS (INSERT INTO user_balances AS b (user_id, balance, held, event_sequence)"
    " SELECT owner, 0, 0, 1 FROM moved WHERE kind = 'purchase' AND %(status)s = 'failed'"
    " ON CONFLICT (user_id) DO UPDATE SET event_sequence = b.event_sequence + 1 RETURNING b.event_sequence)",
    "lot AS (INSERT INTO credit_lots"
    " (id, user_id, transaction_id, category, credits, remaining, priority, expires_at, cost_basis, created_at)"
    " SELECT gen_random_uuid(), owner, id::uuid, lot_category, delta, delta, lot_priority, lot_expires_at,"
    " paid / delta, %(now)s FROM moved WHERE kind = 'purchase' AND %(status)s = 'completed'"
    " RETURNING id, user_id, credits, transaction_id)",
    "lot_posted AS (INSERT INTO lot_postings"
    " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
    " SELECT lot.transaction_id, lot.id, lot.user_id, lot.credits, 0, credited.balance, credited.held,"
    " credited.posted_at FROM lot, credited)",
    f"updated AS ({_EVENT_INSERT} SELECT 'transaction.updated', m.owner, s.event_sequence, m.shown, %(now)s"
    " FROM moved AS m, (SELECT event_sequence FROM consume_or_release UNION ALL SELECT event_sequence FROM credited"
    " UNION ALL SELECT event_sequence FROM numbered) AS s)",
]
_SETTLE = (
    f"WITH {', '.join(_SETTLE_PARTS)} SELECT {', '.join(_TRANSACTION_OUTPUT)},"
    " EXISTS (SELECT 1 FROM credit_lots WHERE user_id = moved.owner AND remaining > 0 AND expires_at <= %(now)s)"
    " FROM moved"
)


class Settled(NamedTuple):
    transaction: Transaction
    lapsed_lots: bool


def settle(
    transaction_id: uuid.UUID, status: str, now: datetime, types: list[str], group_keys: list[str]
) -> Settled | None:
    """Move a pending transaction of one of ``types`` to ``status`` with its effect; None if none moved.

    Safe to run again (on a fresh connection, after one died): a second run moves nothing, and the
    caller then finds the status it asked for.
    """
    params = {"id": str(transaction_id), "status": status, "now": now, "types": types, "group_keys": group_keys}
    rows = run_statement(_SETTLE, params, repeatable=True)
    return Settled(Transaction(*rows[0][:-1]), rows[0][-1]) if rows else None


# Lapsed holds become failed, and the credits they held go back to their lots (where a lot has
# expired meanwhile, they lapse with it: see expire_lots). The rows are locked first (skipped
# when another run holds them, or awaited), then each user's balance row in user-id order, then
# the lots in id order, so that runs releasing holds of the same users cannot deadlock.
@functools.cache
def _release_lapsed(scope: str, skip_locked: bool) -> str:
    condition = {"all": "true", "user": "user_id = %(user_id)s", "one": "id = %(id)s"}[scope]
    parts = [
        "lapsed AS MATERIALIZED (SELECT id FROM user_transactions"
        f" WHERE status = 'pending' AND type = 'usage' AND hold_expires_at <= %(now)s AND {condition}"
        f" ORDER BY hold_expires_at LIMIT %(limit)s FOR UPDATE{' SKIP LOCKED' if skip_locked else ''})",
        "expired AS (UPDATE user_transactions AS t SET status = 'failed', failure_reason = %(reason)s,"
        " updated_at = greatest(%(now)s, t.created_at) FROM lapsed WHERE t.id = lapsed.id"
        f" RETURNING t.id, t.user_id, t.credits, {_transaction_json('t')} AS shown)",
        "released AS MATERIALIZED (SELECT user_id, sum(credits) AS credits, count(*) AS events FROM expired"
        " GROUP BY user_id)",
        "locked AS MATERIALIZED (SELECT b.user_id, b.balance, b.held FROM user_balances AS b JOIN released USING (user_id)"
        " ORDER BY b.user_id FOR UPDATE OF b)",
        "held_lots AS MATERIALIZED (SELECT p.transaction_id, p.lot_id, p.user_id, sum(p.held) AS held"
        " FROM lot_postings AS p JOIN expired ON expired.id = p.transaction_id"
        " WHERE EXISTS (SELECT 1 FROM locked) GROUP BY 1, 2, 3 HAVING sum(p.held) > 0)",
        "lots_locked AS MATERIALIZED (SELECT l.id FROM credit_lots AS l"
        " WHERE l.id IN (SELECT lot_id FROM held_lots) ORDER BY l.id FOR UPDATE)",
        "per_lot AS (SELECT lot_id, sum(held) AS held FROM held_lots GROUP BY lot_id)",
        "returned AS (UPDATE credit_lots AS l SET held = l.held - per_lot.held, remaining = l.remaining + per_lot.held"
        " FROM per_lot JOIN lots_locked ON lots_locked.id = per_lot.lot_id WHERE l.id = per_lot.lot_id)",
        "release AS (UPDATE user_balances AS b SET held = b.held + released.credits,"
        " event_sequence = b.event_sequence + released.events, updated_at = now(),"
        " posted_at = greatest(b.posted_at, %(now)s)"
        " FROM released JOIN locked USING (user_id) WHERE b.user_id = released.user_id"
        " RETURNING b.user_id, b.event_sequence - released.events AS before, b.posted_at)",
        # One transaction.updated per hold, numbered after the user's latest event in the holds' id order.
        f"updated AS ({_EVENT_INSERT} SELECT 'transaction.updated', e.user_id,"
        " r.before + row_number() OVER (PARTITION BY e.user_id ORDER BY e.id) AS sequence, e.shown, %(now)s"
        " FROM expired AS e JOIN release AS r USING (user_id) ORDER BY e.user_id, sequence)",
        "posted AS (INSERT INTO lot_postings"
        " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT h.transaction_id, h.lot_id, h.user_id, 0, -h.held, locked.balance,"
        " locked.held - sum(h.held) OVER (PARTITION BY h.user_id ORDER BY h.transaction_id, h.lot_id), r.posted_at"
        " FROM held_lots AS h JOIN locked USING (user_id) JOIN release AS r USING (user_id)"
        " ORDER BY h.user_id, h.transaction_id, h.lot_id)",
    ]
    return f"WITH {', '.join(parts)} SELECT count(*) FROM expired"


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


# --- expiring lots ------------------------------------------------------------------------------

# A lot just expired, as GET /api/lots shows it (LotSchema), from a row ``p`` of the lot as it was,
# with ``expired``: how many of its credits this expiry took (its held credits, if any, lapse with
# their hold).
_LOT_EXPIRED_JSON = (
    "json_build_object('id', p.id::text, 'user_id', p.user_id::text, 'transaction_id', p.transaction_id::text,"
    " 'category', p.category::text, 'credits', p.credits, 'remaining', 0, 'held', p.held, 'priority', p.priority,"
    f" 'expires_at', {RFC3339.format('p.expires_at')}, 'cost_basis', trim_scale(p.cost_basis)::text,"
    f" 'created_at', {RFC3339.format('p.created_at')}, 'status', 'expired', 'expired', p.remaining)"
)

# The unheld credits of a user's lapsed lots leave the balance: one expiration row and one posting
# per lot, exactly once (the lot's row lock and remaining > 0). Held credits stay held until their
# hold is settled (consumed) or released (then they lapse here with the rest). Each lot has two
# events: the expiration row's transaction.created, then the lot's lot.expired.
_EXPIRE_LOTS = (
    "WITH balance_row AS MATERIALIZED (SELECT balance, held, event_sequence FROM user_balances"
    " WHERE user_id = %(user_id)s FOR UPDATE),"
    " lapsed AS MATERIALIZED (SELECT * FROM credit_lots"
    " WHERE user_id = %(user_id)s AND remaining > 0 AND expires_at <= %(now)s AND EXISTS (SELECT 1 FROM balance_row)"
    " ORDER BY expires_at, id FOR UPDATE),"
    " planned AS MATERIALIZED (SELECT gen_random_uuid() AS expiration_id, lapsed.*,"
    " sum(remaining) OVER (ORDER BY expires_at, id) AS through, row_number() OVER (ORDER BY expires_at, id) AS n"
    " FROM lapsed),"
    " emptied AS (UPDATE credit_lots AS l SET remaining = 0 FROM planned WHERE l.id = planned.id),"
    " recorded AS (INSERT INTO user_transactions AS t (id, user_id, type, amount, credits, description, status,"
    " created_at, updated_at) SELECT expiration_id, %(user_id)s::uuid, 'expiration', 0, -remaining,"
    " remaining || ' ' || category || ' credits expired', 'completed', %(now)s, %(now)s FROM planned"
    f" RETURNING t.id, {_transaction_json('t')} AS shown),"
    " shrunk AS (UPDATE user_balances SET balance = balance - (SELECT sum(remaining) FROM planned),"
    " event_sequence = event_sequence + 2 * (SELECT count(*) FROM planned)"
    f" + {_falls_below('balance - held', 'balance - held - (SELECT sum(remaining) FROM planned)')}::integer,"
    f" updated_at = now(), {_STAMP.format('%(now)s')} WHERE user_id = %(user_id)s AND EXISTS (SELECT 1 FROM planned)"
    f" RETURNING balance, held, event_sequence, posted_at, {_THRESHOLD} AS threshold,"
    f" {_falls_below('balance - held + (SELECT sum(remaining) FROM planned)', 'balance - held')} AS fell),"
    " posted AS (INSERT INTO lot_postings"
    " (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
    " SELECT planned.expiration_id, planned.id, %(user_id)s::uuid, -planned.remaining, 0,"
    " balance_row.balance - planned.through, balance_row.held, shrunk.posted_at FROM planned, balance_row, shrunk"
    " ORDER BY planned.through),"
    f" events AS ({_EVENT_INSERT} SELECT * FROM ("
    " SELECT 'transaction.created', %(user_id)s::uuid, b.event_sequence + 2 * p.n - 1 AS sequence, r.shown, %(now)s"
    " FROM planned AS p JOIN recorded AS r ON r.id = p.expiration_id, balance_row AS b"
    " UNION ALL"
    f" SELECT 'lot.expired', %(user_id)s::uuid, b.event_sequence + 2 * p.n, {_LOT_EXPIRED_JSON}, %(now)s"
    " FROM planned AS p, balance_row AS b"
    " UNION ALL"
    f" SELECT 'balance.low', %(user_id)s::uuid, s.event_sequence, {_LOW_BALANCE_JSON.format(user='%(user_id)s', b='s')}, %(now)s"
    " FROM shrunk AS s WHERE s.fell) AS e ORDER BY sequence)"
    " SELECT count(*) FROM planned"
)
_USERS_WITH_LAPSED_LOTS = (
    "SELECT DISTINCT user_id FROM credit_lots WHERE remaining > 0 AND expires_at <= %(now)s LIMIT %(limit)s"
)


def expire_lots(user_id: uuid.UUID | str, now: datetime, low_balance_default: int | None) -> int:
    """Record the expiry of the user's lots lapsed by ``now``; returns how many lots expired.

    Safe to run again, and concurrently: a lot with nothing left is not expired twice.
    """
    params = {"user_id": str(user_id), "now": now, "low_balance_default": low_balance_default}
    return _value(_EXPIRE_LOTS, params, repeatable=True)


def users_with_lapsed_lots(now: datetime, limit: int) -> list[str]:
    return [str(user_id) for (user_id,) in run_statement(_USERS_WITH_LAPSED_LOTS, {"now": now, "limit": limit})]


# --- bulk loads ---------------------------------------------------------------------------------

# The balance rows that ledger rows loaded in bulk imply, by the same definition the effects keep
# (balance = completed credits, held = credits of pending usage; a balance row from the first
# completed purchase on), each become one paid, never-expiring opening lot, with an opening posting
# and a posting per pending hold on it. For the benchmark seed, which loads a history with COPY.
_OPEN_BALANCES = (
    "WITH totals AS MATERIALIZED (SELECT user_id, gen_random_uuid() AS lot_id,"
    " coalesce(sum(credits) FILTER (WHERE status = 'completed'), 0) AS balance,"
    " coalesce(sum(-credits) FILTER (WHERE status = 'pending' AND type = 'usage'), 0) AS held,"
    " max(updated_at) FILTER (WHERE status = 'completed' OR (status = 'pending' AND type = 'usage')) AS changed,"
    " coalesce(sum(amount) FILTER (WHERE type = 'purchase' AND status = 'completed')"
    "   / nullif(sum(credits) FILTER (WHERE type = 'purchase' AND status = 'completed'), 0), 0) AS cost_basis"
    " FROM user_transactions WHERE user_id = ANY(%(users)s::uuid[]) GROUP BY user_id"
    " HAVING bool_or(type = 'purchase' AND status = 'completed')),"
    " balances AS (INSERT INTO user_balances (user_id, balance, held, updated_at, posted_at)"
    " SELECT user_id, balance, held, changed, changed FROM totals),"
    " lots AS (INSERT INTO credit_lots (id, user_id, category, credits, remaining, held, cost_basis, created_at)"
    " SELECT lot_id, user_id, 'paid', balance, balance - held, held, cost_basis, changed FROM totals WHERE balance > 0)"
    # One insert, each user's opening posting first and then their holds, in the order of the totals.
    " INSERT INTO lot_postings (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
    " SELECT transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at"
    " FROM (SELECT NULL::uuid, lot_id, user_id, balance, 0, balance, 0::bigint, changed, 0 AS n"
    " FROM totals WHERE balance > 0 UNION ALL"
    " SELECT t.id, totals.lot_id, t.user_id, 0, -t.credits, totals.balance,"
    " sum(-t.credits) OVER (PARTITION BY t.user_id ORDER BY t.created_at, t.id), totals.changed,"
    " row_number() OVER (PARTITION BY t.user_id ORDER BY t.created_at, t.id)"
    " FROM user_transactions AS t JOIN totals USING (user_id)"
    " WHERE t.status = 'pending' AND t.type = 'usage' AND totals.balance > 0) AS postings (transaction_id, lot_id,"
    " user_id, credits, held, balance_after, held_after, created_at, n) ORDER BY user_id, n"
)


def open_balances(cursor: Any, user_ids: list[str]) -> None:
    """Make the balance rows and opening lots of users whose ledger rows were loaded in bulk, on the loader's cursor."""
    cursor.execute(_OPEN_BALANCES, {"users": user_ids})


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
