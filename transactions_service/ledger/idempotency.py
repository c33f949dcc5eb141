"""Idempotency keys: a retried write is applied once, and answered as it was the first time.

Behind one call, :func:`write_once`: the claim (the key's record is inserted
by the write's own statement, ``store.record``, so it exists exactly when the
write does), the fingerprint (a key used with another request is refused),
the replay (the transaction as first recorded), and a key another request
still holds.

A concurrent request with the same key waits on the uncommitted record, then
finds the key taken and replays the first answer; if the first attempt rolled
back, it proceeds as the first. When it gives up waiting (the lock timeout,
SQLSTATE 55P03), what it waited for is told by a probe on the key, not by the
server's message (whose language is ``lc_messages``'s): the key held by a
request in flight is ``409 idempotency_key_in_use``; anything else, the
user's balance row, is ``503 balance_busy``. Both are safe to retry. Only
successful writes are recorded: a refused request (409, 422) leaves no record,
so the caller may retry it once the cause is gone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.exc import IntegrityError, OperationalError

from ..errors import ApiError, balance_busy, is_lock_timeout
from ..observability import LEDGER_REPLAYS
from . import store
from .store import Claim, Transaction

_PRIMARY_KEY = "pk_idempotency_keys"
# What a key's record answers, in its fingerprint as records have always been written: a create.
_OPERATION = {"method": "POST", "route": "/api/transactions"}


def claim(caller: str, key: str | None, request: dict[str, Any]) -> Claim | None:
    """The claim a keyed create makes, fingerprinted from the request as validated; None without a key.

    Optional fields left out stay out, so adding one never changes the
    fingerprint of a request recorded before it existed.
    """
    if key is None:
        return None
    comparable = {name: getattr(value, "value", value) for name, value in request.items() if value is not None}
    canonical = json.dumps({**_OPERATION, "body": comparable}, sort_keys=True, default=str)
    return Claim(caller, key, hashlib.sha256(canonical.encode()).hexdigest())


def snapshot(transaction: Transaction) -> str:
    """The transaction as the key's record keeps it (its fields as JSON, the shape the API shows)."""
    return json.dumps(transaction._asdict(), separators=(",", ":"))


def previous(claim: Claim) -> Transaction | None:
    """The transaction first recorded under the claim's key, if any; a key used with another request is refused."""
    record = store.find_claim(claim.caller, claim.key)
    if record is None:
        return None
    if record.request_hash != claim.request_hash:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
            title="Idempotency key reused",
        )
    LEDGER_REPLAYS.inc()
    return Transaction(**json.loads(record.snapshot))


def key_in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        "Another request with this Idempotency-Key is still being processed; retry shortly.",
        title="Idempotency key in use",
        headers={"Retry-After": "1"},
    )


def _is_key_taken(error: IntegrityError) -> bool:
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None) == _PRIMARY_KEY


def _after_lock_timeout(claim: Claim | None, error: OperationalError) -> Transaction:
    """What a write that gave up waiting met: a busy key (409), a recorded one (replay), or a busy balance (503)."""
    if claim is None:
        raise balance_busy() from error
    try:
        free = store.key_is_free(claim.caller, claim.key)
    except OperationalError as probe_error:
        if is_lock_timeout(probe_error):
            raise key_in_use() from error
        raise
    if free:
        raise balance_busy() from error
    replayed = previous(claim)
    if replayed is None:  # recorded, then pruned in between: too rare to answer other than busy
        raise balance_busy() from error
    return replayed


class Outcome(NamedTuple):
    """What a keyed (or unkeyed) write came to: applied, replayed, or neither (its condition failed)."""

    applied: bool
    replay: Transaction | None = None


def write_once(claim: Claim | None, write: Callable[[], bool]) -> Outcome:
    """Run ``write`` (a statement that records ``claim`` with its effect) at most once per key.

    ``write`` returns whether it applied. When it did not, or failed because
    the key is recorded already, the key's first answer is replayed if there
    is one; ``Outcome(False)`` means nothing was recorded and the key is
    unused, so the caller finds out why its condition failed. Any other
    integrity error is the caller's to translate.
    """
    try:
        if write():
            return Outcome(True)
    except IntegrityError as error:
        if claim is None or not _is_key_taken(error):
            raise
        replayed = previous(claim)
        if replayed is None:  # pruned between the conflict and this read
            raise
        return Outcome(False, replayed)
    except OperationalError as error:
        if not is_lock_timeout(error):
            raise
        return Outcome(False, _after_lock_timeout(claim, error))
    return Outcome(False, None if claim is None else previous(claim))


def prune(older_than: datetime) -> int:
    """Delete records created before ``older_than``; returns how many."""
    return store.prune_claims(older_than)
