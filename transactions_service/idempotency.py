"""Idempotency keys: a retried write replays its first response.

A key is claimed by inserting its record in the same statement as the write
it protects (``transactions.sql.record``), so the record exists exactly when
the write does. A concurrent request with the same key waits (on the user's
balance row, or on the uncommitted record), then finds the key taken: the
statement fails on the record's primary key, or records nothing because the
first took the credits, and either way the first response is replayed. If
the first attempt rolled back instead, the request proceeds as the first.
Only successful writes are recorded: a refused request (409, 422) leaves no
record, so the caller may retry it once the cause is gone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, OperationalError

from .errors import ApiError
from .extensions import db
from .transactions.models import IdempotencyRecord

_LOCK_NOT_AVAILABLE = "55P03"
_PRIMARY_KEY = f"pk_{IdempotencyRecord.__tablename__}"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: str


def fingerprint(method: str, route: str, payload: dict[str, Any]) -> str:
    """A digest of the request as validated, so equivalent spellings match."""
    canonical = json.dumps({"method": method, "route": route, "body": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_key_taken(error: IntegrityError) -> bool:
    """Whether a write failed because its key's record already exists."""
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None) == _PRIMARY_KEY


def is_key_busy(error: OperationalError) -> bool:
    """Whether a write gave up waiting for another request that holds its key (the lock timeout)."""
    orig = error.orig
    if getattr(orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
        return False
    # PostgreSQL names what it was waiting for only in the error's context line:
    # 'while inserting index tuple (0,2) in relation "pk_idempotency_keys"'. A wait on
    # anything else (the user's balance row) stays a plain lock timeout, and so does
    # this one on a server whose lc_messages is not English: 503 instead of 409, both
    # safe to retry.
    context = getattr(getattr(orig, "diag", None), "context", None) or ""
    return f'relation "{_PRIMARY_KEY}"' in context


def key_in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        "Another request with this Idempotency-Key is still being processed; retry shortly.",
        title="Idempotency key in use",
        headers={"Retry-After": "1"},
    )


def find_response(caller: str, key: str, request_hash: str) -> StoredResponse | None:
    """The response recorded under ``key``, if any; a key used with another request is refused."""
    previous = db.session.execute(
        select(IdempotencyRecord.request_hash, IdempotencyRecord.status_code, IdempotencyRecord.response_body).where(
            IdempotencyRecord.caller == caller, IdempotencyRecord.key == key
        )
    ).first()
    db.session.rollback()
    if previous is None:
        return None
    if previous.request_hash != request_hash:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
            title="Idempotency key reused",
        )
    return StoredResponse(previous.status_code, previous.response_body)


def previous_response(caller: str, key: str, request_hash: str) -> StoredResponse:
    """The response recorded under ``key``, known to exist."""
    previous = find_response(caller, key, request_hash)
    if previous is None:  # records are only deleted by pruning, long after any retry
        raise RuntimeError(f"the idempotency record {caller}/{key} vanished")
    return previous


def prune(older_than: datetime) -> int:
    """Delete records created before ``older_than``; returns how many."""
    result = db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < older_than))
    db.session.commit()
    return result.rowcount
