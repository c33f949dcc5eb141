"""Idempotency keys: a retried write replays its first response.

A key is claimed by inserting its record in the same database transaction as
the write it protects, so the record exists exactly when the write does. A
concurrent request with the same key blocks on the uncommitted record, then
replays it (or, if the first attempt rolled back, proceeds as the first).
Only successful writes are recorded: a refused request (409, 422) leaves no
record, so the caller may retry it once the cause is gone.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError

from .errors import ApiError
from .extensions import db
from .transactions.models import IdempotencyRecord

_LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: str


def fingerprint(method: str, route: str, payload: dict[str, Any]) -> str:
    """A digest of the request as validated, so equivalent spellings match."""
    canonical = json.dumps({"method": method, "route": route, "body": payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(
    caller: str,
    key: str,
    request_hash: str,
    *,
    status_code: int,
    body: str,
    transaction_id: uuid.UUID,
) -> StoredResponse | None:
    """Record this request's response under ``key``, in the current transaction.

    Returns None when the key is new (the caller goes on to write), or the
    first response when the key was used before with the same request.
    """
    statement = (
        insert(IdempotencyRecord)
        .values(
            caller=caller,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            response_body=body,
            transaction_id=transaction_id,
        )
        .on_conflict_do_nothing(index_elements=["caller", "key"])
        .returning(IdempotencyRecord.key)
    )
    try:
        claimed = db.session.execute(statement).first()
    except OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) == _LOCK_NOT_AVAILABLE:
            db.session.rollback()
            raise ApiError(
                409,
                "idempotency_key_in_use",
                "Another request with this Idempotency-Key is still being processed; retry shortly.",
                title="Idempotency key in use",
                headers={"Retry-After": "1"},
            ) from exc
        raise
    if claimed is not None:
        return None
    previous = db.session.execute(
        select(IdempotencyRecord.request_hash, IdempotencyRecord.status_code, IdempotencyRecord.response_body).where(
            IdempotencyRecord.caller == caller, IdempotencyRecord.key == key
        )
    ).one()
    if previous.request_hash != request_hash:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
            title="Idempotency key reused",
        )
    return StoredResponse(previous.status_code, previous.response_body)


def prune(older_than: datetime) -> int:
    """Delete records created before ``older_than``; returns how many."""
    result = db.session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < older_than))
    db.session.commit()
    return result.rowcount
