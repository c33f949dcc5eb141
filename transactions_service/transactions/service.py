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
from types import SimpleNamespace
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, Engine, exists, func, insert, select, true, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from .. import idempotency
from ..auth import WRITE_PURCHASES, WRITE_USAGE, Caller
from ..errors import ApiError, validation_error
from ..extensions import db
from ..ids import utcnow, uuid7
from ..observability import LEDGER_HOLDS, LEDGER_REFUSED_SPENDS, LEDGER_REPLAYS, LEDGER_TRANSACTIONS
from ..replica import read_history
from ..users.models import User
from .models import HOLD_EXPIRED, TransactionStatus, TransactionType, UserBalance, UserTransaction
from .schemas import decode_cursor, encode_cursor, transaction_json

WRITE_SCOPE = {TransactionType.PURCHASE: WRITE_PURCHASES, TransactionType.USAGE: WRITE_USAGE}

_transactions = UserTransaction.__table__
_balances = UserBalance.__table__

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
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None


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
    """Credit a completed purchase, creating the balance row on first use."""
    statement = pg_insert(_balances).values(user_id=user_id, balance=credits, held=0)
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[_balances.c.user_id],
            set_={"balance": _balances.c.balance + statement.excluded.balance, "updated_at": func.now()},
        )
    )


def _take_from_available(user_id: uuid.UUID, credits: int, *, hold: bool, now: datetime) -> None:
    """Spend (or hold, for pending usage) ``-credits`` if the user has them available.

    Holds that have lapsed but not yet been expired still count in ``held``;
    when they stand in the way of a spend they are expired here and the spend
    is tried once more, so a lapsed hold never refuses a generation.
    """
    needed = -credits
    change = {"held": _balances.c.held + needed} if hold else {"balance": _balances.c.balance - needed}
    take = (
        update(_balances)
        .where(_balances.c.user_id == user_id, _balances.c.balance - _balances.c.held >= needed)
        .values(**change, updated_at=func.now())
        .returning(_balances.c.user_id)
    )
    if db.session.execute(take).first() is not None:
        return
    if _expire_holds(_transactions.c.user_id == user_id, now, skip_locked=True) and db.session.execute(take).first():
        return
    user_known = db.session.scalar(select(exists().where(User.id == user_id)))
    raise _insufficient_credits(user_id, needed) if user_known else _unknown_user(user_id)


def _settle_hold(user_id: uuid.UUID, credits: int, *, consume: bool) -> None:
    """Release a pending usage's hold, consuming its credits when it completed."""
    change = {"held": _balances.c.held + credits}
    if consume:
        change["balance"] = _balances.c.balance + credits
    db.session.execute(
        update(_balances).where(_balances.c.user_id == user_id).values(**change, updated_at=func.now())
    )


def _apply_new(row: dict[str, Any]) -> None:
    """The balance effect of a new ledger row."""
    kind, status, user_id, credits = row["type"], row["status"], row["user_id"], row["credits"]
    if status is TransactionStatus.FAILED:
        return
    if kind is TransactionType.PURCHASE:
        if status is TransactionStatus.COMPLETED:
            _add_to_balance(user_id, credits)
        return
    _take_from_available(user_id, credits, hold=status is TransactionStatus.PENDING, now=row["created_at"])


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


def record_transaction(caller: Caller, payload: dict[str, Any], idempotency_key: str | None) -> Recorded:
    """Record a purchase or usage with its balance effect, at most once per idempotency key."""
    kind: TransactionType = payload["type"]
    caller.require_scope(WRITE_SCOPE[kind])
    now = utcnow()
    fields = {name: value for name, value in payload.items() if name != "hold_expires_in"}
    row = {**fields, "id": uuid7(), "created_at": now, "updated_at": now, "hold_expires_at": None}
    if kind is TransactionType.USAGE and payload["status"] is TransactionStatus.PENDING:
        row["hold_expires_at"] = now + _hold_lifetime(payload.get("hold_expires_in"))
    body = json.dumps(transaction_json(SimpleNamespace(**row)), separators=(",", ":"))
    try:
        if idempotency_key is not None:
            previous = idempotency.claim(
                caller.name,
                idempotency_key,
                idempotency.fingerprint("POST", "/api/transactions", _comparable(payload)),
                status_code=201,
                body=body,
                transaction_id=row["id"],
            )
            if previous is not None:
                db.session.rollback()
                LEDGER_REPLAYS.inc()
                replayed_id = uuid.UUID(json.loads(previous.body)["id"])
                return Recorded(replayed_id, previous.status_code, previous.body, replayed=True)
        _apply_new(row)
        db.session.execute(insert(_transactions).values(**row))
        db.session.commit()
    except IntegrityError as error:
        db.session.rollback()
        translated = _translate_integrity_error(error, payload["user_id"], payload["credits"])
        if translated is None:
            raise
        raise translated from error
    except BaseException:
        db.session.rollback()
        raise
    LEDGER_TRANSACTIONS.labels(kind.value, row["status"].value).inc()
    return Recorded(row["id"], 201, body, replayed=False)


def settle_transaction(caller: Caller, transaction_id: uuid.UUID, status: TransactionStatus) -> dict[str, Any]:
    """Move a pending transaction to completed or failed, once.

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
            .returning(*_transactions.c)
        ).first()
        if moved is not None:
            caller.require_scope(WRITE_SCOPE[moved.type])
            _apply_settlement(moved.type, status, moved.user_id, moved.credits)
            db.session.commit()
            if moved.type is TransactionType.USAGE:
                LEDGER_HOLDS.labels("settled" if status is TransactionStatus.COMPLETED else "released").inc()
            return transaction_json(moved)
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
        return transaction_json(current)
    except BaseException:
        db.session.rollback()
        raise


def _read(transaction_id: uuid.UUID) -> Any:
    return db.session.execute(select(_transactions).where(_transactions.c.id == transaction_id)).first()


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


def get_transaction(caller: Caller, transaction_id: uuid.UUID) -> dict[str, Any]:
    caller.require_read()
    row = _read(transaction_id)
    # Another user's transaction is reported exactly like a missing one.
    if row is None or not caller.can_read(row.user_id):
        raise _not_found(transaction_id)
    return transaction_json(row)


def list_history(
    user_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None = None,
    kind: TransactionType | None = None,
    status: TransactionStatus | None = None,
) -> HistoryPage:
    """One page of a user's history, newest first, by keyset on (created_at, id)."""
    query = select(_transactions).where(_transactions.c.user_id == user_id)
    if kind is not None:
        query = query.where(_transactions.c.type == kind)
    if status is not None:
        query = query.where(_transactions.c.status == status)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            tuple_(_transactions.c.created_at, _transactions.c.id) < tuple_(created_at, last_id)
        )
    query = query.order_by(_transactions.c.created_at.desc(), _transactions.c.id.desc()).limit(limit + 1)

    def fetch(engine: Engine) -> list[Any]:
        with engine.connect() as connection:
            return connection.execute(query).all()

    rows = read_history(fetch)
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else None
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
