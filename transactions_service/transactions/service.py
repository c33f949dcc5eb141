"""The ledger rules: recording, holding, settling and reading credits.

Every write here is one database transaction holding the ledger row, the
balance change it causes and (for keyed requests) the idempotency record.
The balance guards are conditional updates, so concurrent spends serialise on
the user's balance row and never overdraw it; the table's CHECK constraints
back them up for any other code path.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, exists, func, literal_column, select, true, update
from sqlalchemy.exc import IntegrityError, OperationalError

from .. import idempotency
from ..auth import Caller
from ..scopes import WRITE_PURCHASES, WRITE_USAGE
from ..errors import ApiError, validation_error
from ..extensions import db, run_statement
from ..ids import utcnow, uuid7
from ..observability import LEDGER_HOLDS, LEDGER_REFUSED_SPENDS, LEDGER_REPLAYS, LEDGER_TRANSACTIONS
from ..replica import read_history
from ..users.models import User
from .models import HOLD_EXPIRED, TransactionStatus, TransactionType, UserBalance, UserTransaction
from . import sql
from .schemas import decode_cursor, encode_cursor, new_transaction_values, transaction_json

WRITE_SCOPE = {TransactionType.PURCHASE: WRITE_PURCHASES, TransactionType.USAGE: WRITE_USAGE}

_transactions = UserTransaction.__table__
_balances = UserBalance.__table__
# A transaction's values for transaction_json, as the last columns of a statement built with SQLAlchemy.
_AS_TEXT = [literal_column(column).label(f"text_{i}") for i, column in enumerate(sql.TRANSACTION_COLUMN_LIST)]
_TEXT_COUNT = len(_AS_TEXT)

_UNKNOWN_USER_CONSTRAINTS = {
    "fk_user_transactions_user_id_users",
    "fk_user_balances_user_id_users",
}
_OVERDRAFT_CONSTRAINT = "ck_user_balances_available_not_negative"


@dataclass(frozen=True)
class Recorded:
    """The outcome of a create: the response to send and whether it is a replay."""

    transaction_id: uuid.UUID
    status_code: int
    body: str
    replayed: bool


@dataclass(frozen=True)
class Balance:
    user_id: uuid.UUID
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True)
class HistoryPage:
    """A page of history; ``data`` holds each transaction's JSON text (``schemas.transaction_json``)."""

    data: list[str]
    has_more: bool
    next_cursor: str | None

    def to_json(self) -> str:
        cursor = "null" if self.next_cursor is None else json.dumps(self.next_cursor)
        more = "true" if self.has_more else "false"
        return f'{{"data":[{",".join(self.data)}],"has_more":{more},"next_cursor":{cursor}}}'


def _unknown_user(user_id: uuid.UUID) -> ApiError:
    return ApiError(422, "unknown_user", f"User {user_id} is not registered with this service.", title="Unknown user")


def _insufficient_credits(user_id: uuid.UUID, needed: int) -> ApiError:
    LEDGER_REFUSED_SPENDS.inc()
    return ApiError(
        409,
        "insufficient_credits",
        f"User {user_id} has fewer than {needed} available credits.",
        title="Insufficient credits",
    )


def _translate_integrity_error(error: IntegrityError, user_id: uuid.UUID, credits: int) -> ApiError | None:
    constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
    if constraint in _UNKNOWN_USER_CONSTRAINTS:
        return _unknown_user(user_id)
    if constraint == _OVERDRAFT_CONSTRAINT:
        return _insufficient_credits(user_id, abs(credits))
    return None


def _add_to_balance(user_id: uuid.UUID, credits: int) -> None:
    """Credit a completed purchase in the session's transaction, with the statement a new purchase uses."""
    db.session.connection().exec_driver_sql(sql.EFFECTS["credit"], {"user_id": str(user_id), "credits": credits})


def _settle_hold(user_id: uuid.UUID, credits: int, *, consume: bool) -> None:
    """Release a pending usage's hold, consuming its credits when it completed."""
    change = {"held": _balances.c.held + credits}
    if consume:
        change["balance"] = _balances.c.balance + credits
    db.session.execute(
        update(_balances).where(_balances.c.user_id == user_id).values(**change, updated_at=func.now())
    )


def _is_live_hold(now: datetime) -> ColumnElement[bool]:
    return _transactions.c.hold_expires_at.is_(None) | (_transactions.c.hold_expires_at > now)


def _expire_holds(
    condition: ColumnElement[bool], now: datetime, *, limit: int | None = None, skip_locked: bool = False
) -> int:
    """Fail the lapsed holds matching ``condition`` and release their credits, in the current transaction.

    A hold moves once: the row lock and the ``status = 'pending'`` test make
    concurrent expiries (the job, a spend, a settle) release it exactly once.
    """
    lapsed = (
        select(_transactions.c.id)
        .where(
            _transactions.c.status == TransactionStatus.PENDING,
            _transactions.c.type == TransactionType.USAGE,
            _transactions.c.hold_expires_at <= now,
            condition,
        )
        .order_by(_transactions.c.hold_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=skip_locked)
        .cte("lapsed")
    )
    expired = db.session.execute(
        update(_transactions)
        .where(_transactions.c.id == lapsed.c.id)
        .values(
            status=TransactionStatus.FAILED,
            failure_reason=HOLD_EXPIRED,
            updated_at=func.greatest(now, _transactions.c.created_at),
        )
        .returning(_transactions.c.user_id, _transactions.c.credits)
    ).all()
    released: dict[uuid.UUID, int] = defaultdict(int)
    for user_id, credits in expired:
        released[user_id] += credits
    # One user at a time, in a fixed order, so that two expiry batches cannot deadlock.
    for user_id in sorted(released):
        _settle_hold(user_id, released[user_id], consume=False)
    # Counted when the caller commits; a rolled-back expiry is rare and is expired again later.
    LEDGER_HOLDS.labels("expired").inc(len(expired))
    return len(expired)


def expire_holds(batch_size: int = 1000, on_batch: Callable[[int], None] | None = None) -> int:
    """Expire every lapsed hold, one committed batch at a time; returns how many.

    Safe to run concurrently: each batch skips rows another run has locked.
    """
    total = 0
    while True:
        try:
            count = _expire_holds(true(), utcnow(), limit=batch_size, skip_locked=True)
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        total += count
        if on_batch is not None and count:
            on_batch(total)
        if count < batch_size:
            return total


def _apply_settlement(kind: TransactionType, status: TransactionStatus, user_id: uuid.UUID, credits: int) -> None:
    """The balance effect of a pending row moving to ``status``."""
    if kind is TransactionType.PURCHASE:
        if status is TransactionStatus.COMPLETED:
            _add_to_balance(user_id, credits)
        return
    _settle_hold(user_id, credits, consume=status is TransactionStatus.COMPLETED)


def _comparable(payload: dict[str, Any]) -> dict[str, Any]:
    """The validated request as plain values, for the idempotency fingerprint.

    Optional fields left out stay out, so adding one never changes the
    fingerprint of a request recorded before it existed.
    """
    return {name: getattr(value, "value", value) for name, value in payload.items() if value is not None}


def _hold_lifetime(requested_seconds: int | None) -> timedelta:
    limit = current_app.config["HOLD_TTL_SECONDS"]
    if requested_seconds is not None and requested_seconds > limit:
        raise validation_error(
            {"hold_expires_in": [f"Must be between 1 and {limit}."]}, f"hold_expires_in may be at most {limit} seconds."
        )
    return timedelta(seconds=requested_seconds or limit)


def _effect(kind: TransactionType, status: TransactionStatus) -> str | None:
    """Which balance effect a new row has (see ``sql.EFFECTS``); failed rows and pending purchases have none."""
    if status is TransactionStatus.FAILED:
        return None
    if kind is TransactionType.PURCHASE:
        return "credit" if status is TransactionStatus.COMPLETED else None
    return "hold" if status is TransactionStatus.PENDING else "spend"


def _why_not_available(user_id: uuid.UUID, needed: int) -> ApiError:
    user_known = db.session.scalar(select(exists().where(User.id == user_id)))
    db.session.rollback()
    return _insufficient_credits(user_id, needed) if user_known else _unknown_user(user_id)


def _expire_lapsed_holds_of(user_id: uuid.UUID, now: datetime) -> None:
    """Release the user's lapsed holds now, in a transaction of their own, as the expiry job would.

    Holds another request is releasing at the same moment are waited for (the
    lock timeout bounds the wait), not skipped: once this returns, every hold
    of the user's that had lapsed by ``now`` has released its credits.
    """
    try:
        _expire_holds(_transactions.c.user_id == user_id, now)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def _replay(previous: idempotency.StoredResponse) -> Recorded:
    LEDGER_REPLAYS.inc()
    return Recorded(uuid.UUID(json.loads(previous.body)["id"]), previous.status_code, previous.body, replayed=True)


def record_transaction(caller: Caller, payload: dict[str, Any], idempotency_key: str | None) -> Recorded:
    """Record a purchase or usage with its balance effect, at most once per idempotency key.

    One statement does it all (``sql.record``). When it records nothing, the
    credits were not available: the request may be a replay of one that was
    recorded, lapsed holds may stand in the way (they are released, or their
    release by a concurrent request awaited, and the spend is tried once
    more, so a lapsed hold never refuses a generation), or the user is short
    of credits or unknown.
    """
    kind: TransactionType = payload["type"]
    status: TransactionStatus = payload["status"]
    caller.require_scope(WRITE_SCOPE[kind])
    now = utcnow()
    hold_expires_at = None
    if kind is TransactionType.USAGE and status is TransactionStatus.PENDING:
        hold_expires_at = now + _hold_lifetime(payload.get("hold_expires_in"))
    user_id: uuid.UUID = payload["user_id"]
    row = {**payload, "id": uuid7(), "created_at": now, "hold_expires_at": hold_expires_at}
    body = transaction_json(new_transaction_values(row))
    params: dict[str, Any] = {
        "id": str(row["id"]),
        "user_id": str(user_id),
        "type": kind.value,
        "amount": payload["amount"],
        "credits": payload["credits"],
        "needed": -payload["credits"],
        "description": payload["description"],
        "status": status.value,
        "created_at": now,
        "hold_expires_at": hold_expires_at,
        "body": body,
    }
    request_hash = None
    if idempotency_key is not None:
        request_hash = idempotency.fingerprint("POST", "/api/transactions", _comparable(payload))
        params.update(caller=caller.name, key=idempotency_key, request_hash=request_hash)
    effect = _effect(kind, status)
    statement = sql.record(effect, keyed=idempotency_key is not None)

    for attempt in range(2):
        try:
            # With a key a repeat is a replay, so the statement may be run again on a fresh connection.
            rows = run_statement(statement, params, repeatable=idempotency_key is not None)
        except IntegrityError as error:
            if idempotency_key is not None and idempotency.is_key_taken(error):
                return _replay(idempotency.previous_response(caller.name, idempotency_key, request_hash))
            translated = _translate_integrity_error(error, user_id, payload["credits"])
            if translated is None:
                raise
            raise translated from error
        except OperationalError as error:
            if idempotency_key is not None and idempotency.is_key_busy(error):
                raise idempotency.key_in_use() from error
            raise
        if rows:
            LEDGER_TRANSACTIONS.labels(kind.value, status.value).inc()
            return Recorded(row["id"], 201, body, replayed=False)
        # The effect did not apply: the credits were not available.
        if idempotency_key is not None:
            previous = idempotency.find_response(caller.name, idempotency_key, request_hash)
            if previous is not None:
                return _replay(previous)
        if attempt == 0:
            # Tried again even when this request released nothing: a concurrent request
            # (this one's own first attempt, say) may have just released those credits.
            _expire_lapsed_holds_of(user_id, now)
    raise _why_not_available(user_id, params["needed"])


def settle_transaction(caller: Caller, transaction_id: uuid.UUID, status: TransactionStatus) -> str:
    """Move a pending transaction to completed or failed, once; returns its JSON.

    Asking for the status a transaction already has changes nothing, so
    webhook retries are harmless; any other move is refused. A hold that has
    lapsed is released (failed) instead, and completing it is refused.
    """
    now = utcnow()
    try:
        moved = db.session.execute(
            update(_transactions)
            .where(
                _transactions.c.id == transaction_id,
                _transactions.c.status == TransactionStatus.PENDING,
                _is_live_hold(now),
            )
            .values(status=status, updated_at=func.greatest(now, _transactions.c.created_at))
            .returning(_transactions.c.type, _transactions.c.user_id, _transactions.c.credits, *_AS_TEXT)
        ).first()
        if moved is not None:
            caller.require_scope(WRITE_SCOPE[moved.type])
            _apply_settlement(moved.type, status, moved.user_id, moved.credits)
            db.session.commit()
            if moved.type is TransactionType.USAGE:
                LEDGER_HOLDS.labels("settled" if status is TransactionStatus.COMPLETED else "released").inc()
            return transaction_json(moved[-_TEXT_COUNT:])
        current = _read(transaction_id)
        if current is None:
            raise _not_found(transaction_id)
        caller.require_scope(WRITE_SCOPE[current.type])
        if current.status is TransactionStatus.PENDING:
            # Not moved although pending: its hold has lapsed. Release it now, for good.
            _expire_holds(_transactions.c.id == transaction_id, now)
            db.session.commit()
            current = _read(transaction_id)
        if current.status != status:
            raise _refused_move(current, status)
        db.session.rollback()
        return transaction_json(current[-_TEXT_COUNT:])
    except BaseException:
        db.session.rollback()
        raise


def _read(transaction_id: uuid.UUID) -> Any:
    return db.session.execute(
        select(
            _transactions.c.type,
            _transactions.c.user_id,
            _transactions.c.status,
            _transactions.c.failure_reason,
            _transactions.c.hold_expires_at,
            *_AS_TEXT,
        ).where(_transactions.c.id == transaction_id)
    ).first()


def _refused_move(current: Any, requested: TransactionStatus) -> ApiError:
    if current.failure_reason == HOLD_EXPIRED:
        return ApiError(
            409,
            "hold_expired",
            f"The hold lapsed at {current.hold_expires_at.isoformat()} and its credits were released; "
            "record a new usage to charge for this generation.",
            title="Hold expired",
        )
    return ApiError(
        409,
        "invalid_transition",
        f"The transaction is {current.status.value}; only a pending transaction can become {requested.value}.",
        title="Invalid transition",
    )


def _not_found(transaction_id: uuid.UUID) -> ApiError:
    return ApiError(404, "not_found", f"No transaction {transaction_id}.", title="Not Found")


def get_transaction(caller: Caller, transaction_id: uuid.UUID) -> str:
    """One transaction's JSON, for its owner or a reading service."""
    caller.require_read()
    row = _read(transaction_id)
    db.session.rollback()
    # Another user's transaction is reported exactly like a missing one.
    if row is None or not caller.can_read(row.user_id):
        raise _not_found(transaction_id)
    return transaction_json(row[-_TEXT_COUNT:])


def list_history(
    user_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None = None,
    kind: TransactionType | None = None,
    status: TransactionStatus | None = None,
) -> HistoryPage:
    """One page of a user's history, newest first, by keyset on (created_at, id)."""
    params: dict[str, Any] = {"user_id": str(user_id), "limit": limit + 1}
    if kind is not None:
        params["type"] = kind.value
    if status is not None:
        params["status"] = status.value
    if cursor is not None:
        after_created_at, after_id = decode_cursor(cursor)
        params.update(after_created_at=after_created_at, after_id=str(after_id))
    statement = sql.history_page(by_type=kind is not None, by_status=status is not None, after=cursor is not None)
    rows = read_history(lambda engine: run_statement(statement, params, engine, repeatable=True))
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if has_more:
        last = rows[-1]
        next_cursor = encode_cursor(last[sql.CREATED_AT_COLUMN], last[sql.ID_COLUMN])
    return HistoryPage([transaction_json(row) for row in rows], has_more, next_cursor)


def get_balance(user_id: uuid.UUID) -> Balance:
    """The user's totals, with holds that have lapsed already counted as released."""
    lapsed = (
        select(func.coalesce(func.sum(-_transactions.c.credits), 0))
        .where(
            _transactions.c.user_id == user_id,
            _transactions.c.status == TransactionStatus.PENDING,
            _transactions.c.type == TransactionType.USAGE,
            _transactions.c.hold_expires_at <= utcnow(),
        )
        .scalar_subquery()
    )
    row = db.session.execute(
        select(_balances.c.balance, _balances.c.held - lapsed).where(_balances.c.user_id == user_id)
    ).first()
    if row is None:
        return Balance(user_id, 0, 0)
    return Balance(user_id, row[0], row[1])
