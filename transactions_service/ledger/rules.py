"""The ledger's rules: recording, settling, expiring and reading credits.

Rules take validated requests and return domain values (``store.Transaction``,
``store.Balance``, :class:`HistoryPage`); views and schemas turn them into
HTTP. Who may do what is asked of ``policy`` before anything is written; every
statement is in ``store``; keys are ``idempotency``'s.

The balance guards are conditional updates inside single statements, so
concurrent spends serialise on the user's balance row and never overdraw it;
the table's CHECK constraints back them up for any other code path.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy.exc import IntegrityError, OperationalError

from ..auth import Caller
from ..errors import ApiError, balance_busy, validation_error
from ..ids import rfc3339, utcnow, uuid7
from ..observability import LEDGER_HOLDS, LEDGER_LOTS_EXPIRED, LEDGER_REFUSED_SPENDS, LEDGER_TRANSACTIONS
from ..replica import read_history
from . import idempotency, policy, store
from .models import HOLD_EXPIRED, LotCategory, TransactionStatus, TransactionType
from .store import Balance, Lot, Position, Posting, Registration, Transaction, TransactionState

_UNKNOWN_USER_CONSTRAINTS = {"fk_user_transactions_user_id_users", "fk_user_balances_user_id_users"}
_OVERDRAFT_CONSTRAINT = "ck_user_balances_available_not_negative"
_REFERENCE_CONSTRAINT = "uq_user_transactions_reference"
_LOT_CONSTRAINTS = {
    "ck_credit_lots_remaining_not_negative", "ck_credit_lots_held_not_negative", "ck_credit_lots_within_credits"
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """A create's outcome: the transaction as first recorded, and whether this answer is a replay."""

    transaction: Transaction
    replayed: bool


@dataclass(frozen=True)
class HistoryPage:
    transactions: list[Transaction]
    has_more: bool
    next_cursor: str | None


@dataclass(frozen=True)
class LotsPage:
    lots: list[Lot]
    has_more: bool
    next_cursor: str | None


# --- recording ------------------------------------------------------------------------------------


def _unknown_user(user_id: uuid.UUID) -> ApiError:
    return ApiError(422, "unknown_user", f"User {user_id} is not registered with this service.", title="Unknown user")


def _insufficient_credits(caller: Caller, user_id: uuid.UUID, needed: int) -> ApiError:
    """409; the caller that may read the user's balance is told how many credits are available."""
    LEDGER_REFUSED_SPENDS.inc()
    detail = f"User {user_id} has fewer than {needed} available credits."
    if policy.reads_any_user(caller):
        known = store.balance(user_id, utcnow())
        detail = f"User {user_id} has {known.available if known else 0} available credits; this needs {needed}."
    return ApiError(409, "insufficient_credits", detail, title="Insufficient credits")


def _hold_lifetime(requested_seconds: int | None) -> timedelta:
    limit = current_app.config["HOLD_TTL_SECONDS"]
    if requested_seconds is not None and requested_seconds > limit:
        raise validation_error(
            {"hold_expires_in": [f"Must be between 1 and {limit}."]}, f"hold_expires_in may be at most {limit} seconds."
        )
    return timedelta(seconds=requested_seconds or limit)


def _effect(kind: TransactionType, status: TransactionStatus, credits: int) -> str | None:
    """Which balance effect a new row has (``store.EFFECTS``); failed rows and pending purchases have none."""
    if status is TransactionStatus.FAILED:
        return None
    if _makes_lot(kind, credits):
        return "credit" if status is TransactionStatus.COMPLETED else None
    if kind is TransactionType.REFUND:
        return "refund"
    if kind is TransactionType.REVERSAL:
        return "reversal"
    # usage, or an adjustment that takes credits away
    return "hold" if status is TransactionStatus.PENDING else "spend"


# The types whose credits enter as a lot of their own, and the lot's category unless the request names one.
_CREDITS = {
    TransactionType.PURCHASE: LotCategory.PAID,
    TransactionType.GRANT: LotCategory.PROMOTIONAL,
    TransactionType.ADJUSTMENT: LotCategory.PROMOTIONAL,
}
DEFAULT_PRIORITY = 50


def _makes_lot(kind: TransactionType, credits: int) -> bool:
    return kind in _CREDITS and credits > 0


def _lot_terms(request: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The terms of the lot a purchase, grant or positive adjustment makes: category, priority, expiry, cost per credit."""
    kind = request["type"]
    if not _makes_lot(kind, request["credits"]):
        return {"lot_category": None, "lot_priority": None, "lot_expires_at": None, "lot_id": None, "cost_basis": 0}
    expires_at = request.get("expires_at")
    if request.get("expires_in") is not None:
        expires_at = now + timedelta(seconds=request["expires_in"])
    return {
        "lot_category": (request.get("category") or _CREDITS[kind]).value,
        "lot_priority": DEFAULT_PRIORITY if request.get("priority") is None else request["priority"],
        "lot_expires_at": expires_at,
        "lot_id": str(uuid.uuid4()),
        "cost_basis": request["amount"] / request["credits"],
    }


def usage_group_keys() -> list[str]:
    """The metadata keys the usage rollup keeps per value, for summaries split by them (USAGE_GROUP_KEYS)."""
    return current_app.config["USAGE_GROUP_KEYS"]


def _low_balance_default() -> int | None:
    """The threshold below which a user's available credits fire balance.low, unless they have their own."""
    return current_app.config["LOW_BALANCE_THRESHOLD"]


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _new_transaction(request: dict[str, Any], now: datetime) -> tuple[Transaction, dict[str, Any]]:
    """The transaction a request makes, as the API will show it, and the row ``store.record`` inserts."""
    kind, status = request["type"], request["status"]
    hold_expires_at = None
    if kind is TransactionType.USAGE and status is TransactionStatus.PENDING:
        hold_expires_at = now + _hold_lifetime(request.get("hold_expires_in"))
    new = Transaction(
        id=str(uuid7()), user_id=str(request["user_id"]), type=kind.value, amount=f"{request['amount']:.2f}",
        credits=request["credits"], description=request["description"], status=status.value,
        created_at=rfc3339(now), updated_at=rfc3339(now),
        hold_expires_at=None if hold_expires_at is None else rfc3339(hold_expires_at),
        refunds=_text(request.get("refunds")), reverses=_text(request.get("reverses")),
        metadata=request.get("metadata") or {}, reference=request.get("reference"),
    )
    row = {
        **new._asdict(), "amount": request["amount"], "created_at": now, "hold_expires_at": hold_expires_at,
        "needed": -request["credits"], "low_balance_default": _low_balance_default(), **_lot_terms(request, now),
        "group_keys": usage_group_keys(),
    }
    # Kept as the caller wrote it, members in its order; shown the same way (api/schemas.py).
    row["metadata_json"] = json.dumps(row.pop("metadata"), separators=(",", ":"))
    return new, row


# What a refund and a reversal give back: (the field naming it, its type, the problem when it is not one).
_GIVES_BACK = {
    TransactionType.REFUND: ("refunds", TransactionType.PURCHASE, "not_refundable"),
    TransactionType.REVERSAL: ("reverses", TransactionType.USAGE, "not_reversible"),
}


def _check_given_back(request: dict[str, Any]) -> None:
    """A refund must name a completed purchase, a reversal a completed usage, of the same user (else 422).

    Checked before the write: a transaction's type, owner and completion never change once completed.
    """
    field, expected, problem = _GIVES_BACK[request["type"]]
    target_id = request[field]
    target = store.state(target_id)
    if target is None or str(target.user_id) != str(request["user_id"]):
        raise ApiError(
            422, "unknown_transaction", f"User {request['user_id']} has no transaction {target_id}.",
            title="Unknown transaction",
        )
    if target.type != expected or target.status != TransactionStatus.COMPLETED:
        raise ApiError(
            422, problem,
            f"Transaction {target_id} is a {target.status} {target.type}; only a completed {expected.value} can be"
            f" {'refunded' if expected is TransactionType.PURCHASE else 'reversed'}.",
            title="Not refundable" if expected is TransactionType.PURCHASE else "Not reversible",
        )


def _refusal(caller: Caller, request: dict[str, Any], needed: int, now: datetime) -> ApiError | None:
    """Why a write that recorded nothing was refused, as of now; None when it would fit now (a concurrent
    write changed what it depends on, and it is tried again)."""
    kind, user_id = request["type"], request["user_id"]
    if kind is TransactionType.REFUND:
        limits = store.refund_limits(request["refunds"], now)
        if limits.remaining < needed:
            return ApiError(
                409, "refund_exceeds_remaining",
                f"Purchase {request['refunds']} has {limits.remaining} credits left to refund; this refunds {needed}.",
                title="Refund exceeds remaining credits", extensions={"remaining": limits.remaining},
            )
        if Decimal(limits.amount) < request["amount"]:
            return ApiError(
                409, "refund_exceeds_amount",
                f"Purchase {request['refunds']} has ${limits.amount} left to refund; this refunds ${request['amount']:.2f}.",
                title="Refund exceeds amount", extensions={"remaining_amount": limits.amount},
            )
        return None
    if kind is TransactionType.REVERSAL:
        left = store.reversible(request["reverses"])
        if left < request["credits"]:
            return ApiError(
                409, "reversal_exceeds_usage",
                f"Usage {request['reverses']} has {left} credits left to reverse; this reverses {request['credits']}.",
                title="Reversal exceeds usage", extensions={"remaining": left},
            )
        return None
    if not store.user_exists(user_id):
        return _unknown_user(user_id)
    return _insufficient_credits(caller, user_id, needed)


def _duplicate_reference(request: dict[str, Any]) -> ApiError:
    kind, reference = request["type"].value, request["reference"]
    existing = store.by_reference(request["user_id"], kind, reference)
    return ApiError(
        409, "duplicate_reference",
        f"User {request['user_id']} already has a {kind} with reference {reference!r}: transaction {existing}.",
        title="Duplicate reference", extensions={"transaction_id": existing},
    )


def _applied(
    write: Callable[[], store.Recorded | None], request: dict[str, Any], claim: store.Claim | None,
    caller: Caller, needed: int, found: dict[str, bool],
) -> Callable[[], bool]:
    """``write``, with the database's refusals told as the problems they mean; ``found["lapsed_lots"]``
    says whether the user has lots whose expiry is to be recorded."""
    user_id = request["user_id"]

    def translated() -> bool:
        try:
            recorded = write()
        except IntegrityError as error:
            constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
            if constraint == _REFERENCE_CONSTRAINT:
                # The ledger row is inserted before the key's record: a retry of the write that took the
                # reference meets the reference first, and is a replay all the same.
                if claim is not None and store.find_claim(claim.caller, claim.key) is not None:
                    return False
                raise _duplicate_reference(request) from error
            if constraint in _UNKNOWN_USER_CONSTRAINTS:
                raise _unknown_user(user_id) from error
            if constraint == _OVERDRAFT_CONSTRAINT:
                raise _insufficient_credits(caller, user_id, needed) from error
            if constraint in _LOT_CONSTRAINTS:
                # The statement planned from a lot as it no longer was, and the lot's CHECK refused
                # it: nothing was written, and the next try reads the lot anew (ADR 0005).
                log.warning("a write was refused by %s and is tried again", constraint)
                found["lot_conflict"] = True
                return False
            raise
        found["lapsed_lots"] = recorded is not None and recorded.lapsed_lots
        return recorded is not None

    return translated


# Tries of a write that recorded nothing before it is told busy (503, safe to retry): the second follows the
# release of lapsed holds and lots, and later ones a lot's CHECK refusing a stale plan, or a refusal that no
# longer held when it was explained.
_ATTEMPTS = 4


def record_transaction(caller: Caller, request: dict[str, Any], key: str | None, *, now: datetime | None = None) -> Recorded:
    """Record a transaction with its balance effect, at most once per idempotency key.

    One statement does it all (``store.record``). When it records nothing, the
    credits were not available (or, for a refund or reversal, what is left to
    give back): the request may be a replay of one that was recorded, lapsed
    holds may stand in the way (they are released, or their release by a
    concurrent request awaited, and the write is tried once more, so a lapsed
    hold never refuses a generation), or the limit is exceeded, or the user
    is unknown.
    """
    kind = request["type"]
    policy.require_write(caller, kind)
    if kind in _GIVES_BACK:
        _check_given_back(request)
    now = now or utcnow()  # another instant only for demo data and tests (flask demo seed)
    new, row = _new_transaction(request, now)
    claim = idempotency.claim(caller.name, key, request)
    shown = idempotency.snapshot(new)
    user_id, effect = request["user_id"], _effect(kind, request["status"], request["credits"])
    found = {"lapsed_lots": False}
    write = _applied(lambda: store.record(row, effect, claim, shown), request, claim, caller, row["needed"], found)
    for attempt in range(_ATTEMPTS):
        outcome = idempotency.write_once(claim, write)
        if outcome.applied:
            LEDGER_TRANSACTIONS.labels(new.type, new.status).inc()
            if found["lapsed_lots"] or kind is TransactionType.REVERSAL:
                # A write spends only lots that have not expired, whatever is recorded yet; the
                # expiry of those that have is recorded by the first write that finds them. (A
                # reversal may have given credits back to a lot that has expired since.)
                expire_lots_of(user_id, now)
            return Recorded(new, replayed=False)
        if outcome.replay is not None:
            return Recorded(outcome.replay, replayed=True)
        if found.pop("lot_conflict", False):
            continue
        if attempt == 0:
            # Tried again even when this request released nothing: a concurrent request
            # (this one's own first attempt, say) may have just released those credits.
            _release_lapsed_holds(now, user_id=user_id)
            expire_lots_of(user_id, now)
        elif (refusal := _refusal(caller, request, row["needed"], now)) is not None:
            raise refusal
    raise balance_busy()


def debits_at_once(caller: Caller, request: dict[str, Any]) -> bool:
    """Whether a batch's item can go with the others in one statement (``record_debits``): a usage,
    completed (a spend) or pending (a hold) within the longest hold allowed, that the caller may write."""
    kind, status = request["type"], request["status"]
    if kind is not TransactionType.USAGE or not policy.may_write(caller, kind):
        return False
    if status is TransactionStatus.PENDING:
        try:
            _hold_lifetime(request.get("hold_expires_in"))
        except ApiError:  # longer than allowed: answered alone, with its problem
            return False
        return True
    return status is TransactionStatus.COMPLETED


def record_debits(
    caller: Caller, items: list[tuple[dict[str, Any], str]], now: datetime, *, whole: bool = False
) -> dict[int, Transaction]:
    """Record usage items (spends and holds), each with its key, in one statement (``store.debit_batch``);
    returns the transactions of those applied, by their place in ``items``.

    For each user, the items applied are a prefix of theirs, each applied as
    ``record_transaction`` alone would have after the ones before it. The rest
    wrote nothing (a key recorded already, credits not there now, a user
    without a balance): the caller answers them, and the user's later items,
    one by one. So does it all of them when the statement fails on what a
    concurrent write holds (another request's key or reference, a lock).
    With ``whole``, inside a transaction of the caller's that it will roll back
    unless every item applied, it reports none unless all did.
    """
    columns: dict[str, list[Any]] = {name: [] for name in _DEBIT_COLUMNS}
    made = []
    for ord_, (request, key) in enumerate(items):
        new, row = _new_transaction(request, now)
        claim = idempotency.claim(caller.name, key, request)
        for name, value in zip(_DEBIT_COLUMNS, (
            ord_, new.id, new.user_id, row["needed"], request["status"] is TransactionStatus.PENDING,
            row["hold_expires_at"], row["amount"], new.description, row["metadata_json"], new.reference,
            idempotency.snapshot(new), key, claim.request_hash,
        )):
            columns[name].append(value)
        made.append(new)
    try:
        debited = store.debit_batch(columns, caller.name, now, _low_balance_default(), usage_group_keys())
    except (IntegrityError, OperationalError) as error:
        log.info("a batch's usage met a concurrent write (%s) and is answered one by one", type(error).__name__)
        return {}
    if whole and len(debited.applied) < len(items):
        return {}
    for ord_ in debited.applied:
        LEDGER_TRANSACTIONS.labels(made[ord_].type, made[ord_].status).inc()
    for user_id in debited.lapsed_users:
        expire_lots_of(user_id, now)
    return {ord_: made[ord_] for ord_ in debited.applied}


# The columns of ``store.debit_batch``'s items, in the order ``record_debits`` fills them.
_DEBIT_COLUMNS = ("ords", "ids", "users", "needed", "holds", "hold_expires", "amounts", "descriptions", "metadata",
                  "references", "shown", "keys", "hashes")


# --- settling and expiring -------------------------------------------------------------------------


def _not_found(transaction_id: uuid.UUID) -> ApiError:
    return ApiError(404, "not_found", f"No transaction {transaction_id}.", title="Not Found")


def _refused_move(current: TransactionState, requested: TransactionStatus) -> ApiError:
    if current.failure_reason == HOLD_EXPIRED:
        lapsed_at = rfc3339(current.hold_expires_at) if current.hold_expires_at else "its expiry"
        return ApiError(
            409,
            "hold_expired",
            f"The hold lapsed at {lapsed_at} and its credits were released; "
            "record a new usage to charge for this generation.",
            title="Hold expired",
        )
    return ApiError(
        409,
        "invalid_transition",
        f"The transaction is {current.status}; only a pending transaction can become {requested.value}.",
        title="Invalid transition",
    )


def _release_lapsed_holds(now: datetime, **which: Any) -> int:
    released = store.release_lapsed_holds(now, **which)
    LEDGER_HOLDS.labels("expired").inc(released)
    return released


def settle_transaction(
    caller: Caller, transaction_id: uuid.UUID, status: TransactionStatus, *, now: datetime | None = None
) -> Transaction:
    """Move a pending transaction to completed or failed, once.

    Only types the caller may write move (decided before the statement runs).
    Asking for the status a transaction already has changes nothing, so
    webhook retries are harmless; any other move is refused. A hold that has
    lapsed is released (failed) instead, and completing it is refused.
    """
    now = now or utcnow()  # as in record_transaction
    settled = store.settle(transaction_id, status.value, now, policy.writable_types(caller), usage_group_keys())
    if settled is not None:
        moved = settled.transaction
        if moved.type == TransactionType.USAGE:
            LEDGER_HOLDS.labels("settled" if status is TransactionStatus.COMPLETED else "released").inc()
        if settled.lapsed_lots:
            expire_lots_of(moved.user_id, now)
        return moved
    current = store.state(transaction_id)
    if current is None:
        raise _not_found(transaction_id)
    policy.require_write(caller, current.type)
    if current.status == TransactionStatus.PENDING:
        # Not moved although pending and writable: its hold has lapsed. Release it now, for good.
        _release_lapsed_holds(now, transaction_id=transaction_id)
        expire_lots_of(current.user_id, now)
        current = store.state(transaction_id)
    if current.status != status:
        raise _refused_move(current, status)
    unchanged = store.read(transaction_id)
    assert unchanged is not None  # transactions are never deleted
    return unchanged


def expire_lots_of(user_id: uuid.UUID | str, now: datetime | None = None) -> int:
    """Record the expiry of the user's lapsed lots (their unheld credits); returns how many lots expired."""
    expired = store.expire_lots(user_id, now or utcnow(), _low_balance_default())
    LEDGER_LOTS_EXPIRED.inc(expired)
    return expired


def expire(batch_size: int = 1000, on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Release every lapsed hold, then record every lapsed lot's expiry, a batch at a time.

    Returns (holds released, lots expired). Safe to run concurrently and again:
    hold batches skip rows another run has locked, and a lot is expired once.
    """
    holds = lots = 0
    while True:
        count = _release_lapsed_holds(utcnow(), limit=batch_size, skip_locked=True)
        holds += count
        if on_batch is not None and count:
            on_batch(holds, lots)
        if count < batch_size:
            break
    while users := store.users_with_lapsed_lots(utcnow(), batch_size):
        lots += sum(expire_lots_of(user_id) for user_id in users)
        if on_batch is not None:
            on_batch(holds, lots)
    return holds, lots


# --- reading ----------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CURSOR = re.compile(r"([0-9]{1,16})-([0-9a-f]{32})")


def encode_cursor(created_at: str, transaction_id: str) -> str:
    """An opaque position in a newest-first history: the last row a page showed.

    Microseconds since the epoch and the row id: every string of this shape is
    a position, so a cursor is either well-formed or refused, never half-read.
    """
    moment = datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{transaction_id.replace('-', '')}"


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names (see :func:`encode_cursor`)."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this service returned.", title="Invalid cursor")
    return Position(_EPOCH + timedelta(microseconds=int(match[1])), uuid.UUID(hex=match[2]))


def history_filter(
    kind: TransactionType | None = None,
    status: TransactionStatus | None = None,
    reference: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metadata: dict[str, str] | None = None,
) -> store.HistoryFilter:
    """Which of a user's transactions a page or an export holds: a type, a status, the caller's reference,
    the half-open interval [``created_after``, ``created_before``), and metadata pairs that must all match."""
    return store.HistoryFilter(kind and kind.value, status and status.value, reference, created_after, created_before,
                               metadata or None)


def list_history(user_id: uuid.UUID, *, limit: int, cursor: str | None = None, **filters: Any) -> HistoryPage:
    """One page of a user's history, newest first, by keyset on (created_at, id), from the replica if any.

    The filters (:func:`history_filter`) narrow it. A cursor continues the page it came from, filters and all.
    """
    after = None if cursor is None else decode_cursor(cursor)
    only = history_filter(**filters)
    rows = read_history(lambda engine: store.history_page(engine, user_id, limit + 1, only=only, after=after))
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else None
    return HistoryPage(rows, has_more, next_cursor)


def get_transaction(caller: Caller, transaction_id: uuid.UUID) -> Transaction:
    """One transaction, for its owner or a reading service; another user's is reported as missing."""
    policy.require_read(caller)
    transaction = store.read(transaction_id)
    if transaction is None or not policy.can_read(caller, transaction.user_id):
        raise _not_found(transaction_id)
    return transaction


def list_lots(user_id: uuid.UUID, *, limit: int, cursor: str | None = None, status: str = "active") -> LotsPage:
    """One page of a user's lots, newest first: those with credits left and not expired, or all."""
    after = None if cursor is None else decode_cursor(cursor)
    lots = store.lots_page(user_id, limit + 1, utcnow(), active_only=status == "active", after=after)
    has_more = len(lots) > limit
    lots = lots[:limit]
    next_cursor = encode_cursor(rfc3339(lots[-1].created_at), str(lots[-1].id)) if has_more else None
    return LotsPage(lots, has_more, next_cursor)


@dataclass(frozen=True)
class EventsPage:
    events: list[store.Event]
    has_more: bool
    next_cursor: str | None


_FEED_CURSOR = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")


def feed_cursor(position: store.FeedPosition) -> str:
    """An opaque position in the event feed: the last event a page showed (its transaction's id, its position)."""
    return f"{position.xid}-{position.position}"


def feed_position(cursor: str | None) -> store.FeedPosition:
    if cursor is None:
        return store.FeedPosition(0, 0)
    match = _FEED_CURSOR.fullmatch(cursor)
    if match is None or max(int(match[1]), int(match[2])) >= 2**63:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this service returned.", title="Invalid cursor")
    return store.FeedPosition(int(match[1]), int(match[2]))


def list_events(
    caller: Caller, *, limit: int, after: str | None = None, types: list[str], user_id: uuid.UUID | None = None
) -> EventsPage:
    """Events after a cursor, in feed order: a reader that pages on ``next_cursor`` sees every event once.

    The page ends where the feed does; ``next_cursor`` is where to ask again
    (the cursor given, when nothing is new), so a reader polls with it.
    """
    policy.require_events(caller)
    events = store.events_page(feed_position(after), limit + 1, types=types, user_id=user_id)
    has_more = len(events) > limit
    events = events[:limit]
    next_cursor = feed_cursor(store.FeedPosition(events[-1].xid, events[-1].position)) if events else after
    return EventsPage(events, has_more, next_cursor)


def prune_events(older_than: datetime) -> int:
    """Delete the events written before ``older_than``, a batch at a time; returns how many."""
    pruned = 0
    while count := store.prune_events(older_than, 10_000):
        pruned += count
    return pruned


def postings_of(transaction: Transaction) -> list[Posting]:
    """Which lots a transaction changed, and by how much: which lots paid for a generation."""
    return store.postings(transaction.id)


def get_balance(user_id: uuid.UUID) -> Balance:
    """The user's totals, with holds that have lapsed already counted as released."""
    return store.balance(user_id, utcnow()) or Balance(user_id, 0, 0)


_KEEP = object()


def register_user(user_id: uuid.UUID, low_balance_threshold: Any = _KEEP) -> Registration:
    """Make the user known to the ledger (safe to repeat), and set their low-balance threshold if given
    (an integer, or None for no alerts); without one, a user keeps theirs or has the service's default."""
    registration = store.register(user_id)
    if low_balance_threshold is not _KEEP:
        store.set_low_balance_threshold(user_id, low_balance_threshold)
    return registration


def low_balance_threshold(user_id: uuid.UUID) -> int | None:
    """The threshold that applies to the user: their own, or else the service's default (None: no alerts)."""
    own = store.low_balance_threshold(user_id)
    return own.threshold if own.own else _low_balance_default()

