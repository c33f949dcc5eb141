"""The bodies of writes (``POST /api/transactions``, and the items of a batch), built from a caller's terms.

The one place where a caller's positive ``credits`` get the sign the ledger stores
(a usage or a refund is negative on the wire) and where an idempotency key is made
when the caller gives none. Each builder returns a whole ``BatchItem``: its key
travels with it, so sending the same item again, alone or in a batch, replays it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, NotRequired, TypedDict

Amount = Decimal | str | int
UserId = uuid.UUID | str
# The terms of the lot a purchase makes (openapi.yaml, NewTransaction).
LOT_TERMS = frozenset({"expires_at", "expires_in", "priority"})


class Write(TypedDict):
    """A ``BatchItem`` of openapi.yaml: a whole ``POST /api/transactions`` body and its idempotency key."""

    user_id: str
    type: Literal["purchase", "usage", "grant", "refund", "reversal", "adjustment"]
    credits: int
    description: str
    idempotency_key: str
    amount: NotRequired[str]
    status: NotRequired[Literal["completed", "pending", "failed"]]
    hold_expires_in: NotRequired[int]
    expires_at: NotRequired[str]
    expires_in: NotRequired[int]
    priority: NotRequired[int]
    refunds: NotRequired[str]
    reverses: NotRequired[str]
    metadata: NotRequired[dict[str, str]]
    reference: NotRequired[str]


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _count(credits: int) -> int:
    if isinstance(credits, bool) or not isinstance(credits, int) or credits <= 0:
        raise ValueError(f"credits is a positive number of credits (the client signs it), not {credits!r}")
    return credits


def _dollars(amount: Amount) -> str:
    if isinstance(amount, (float, bool)) or not isinstance(amount, (Decimal, str, int)):
        raise TypeError(f"amount is a Decimal, a string or an int of dollars, never a float: {amount!r}")
    return str(amount)


def _write(user_id: UserId, kind: str, credits: int, description: str, *, idempotency_key: str | None,
           metadata: Mapping[str, str] | None, reference: str | None, **fields: Any) -> Write:
    body: dict[str, Any] = {"user_id": str(user_id), "type": kind, "credits": credits, "description": description}
    body.update({name: value for name, value in fields.items() if value is not None})
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if reference is not None:
        body["reference"] = reference
    body["idempotency_key"] = idempotency_key if idempotency_key is not None else new_idempotency_key()
    return body  # type: ignore[return-value]  # built to the Write shape above


def _lot_terms(terms: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(terms) - LOT_TERMS)
    if unknown:
        raise TypeError(f"unknown lot terms {unknown}; a purchase's lot takes {sorted(LOT_TERMS)}")
    loaded = dict(terms)
    expires_at = loaded.get("expires_at")
    if isinstance(expires_at, datetime):
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        loaded["expires_at"] = expires_at.isoformat()
    return loaded


def purchase(user_id: UserId, credits: int, amount: Amount, description: str, *,
             status: Literal["completed", "pending", "failed"] = "completed", idempotency_key: str | None = None,
             metadata: Mapping[str, str] | None = None, reference: str | None = None, **lot_terms: Any) -> Write:
    """Credits bought for ``amount`` dollars; ``pending`` until the payment settles (``Client.settle``).

    ``lot_terms``: ``expires_at`` (an aware datetime), ``expires_in`` (seconds), ``priority`` (0-100).
    """
    return _write(user_id, "purchase", _count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, amount=_dollars(amount), status=status,
                  **_lot_terms(lot_terms))


def grant(user_id: UserId, credits: int, description: str, *,
          category: Literal["promotional", "paid"] = "promotional", idempotency_key: str | None = None,
          metadata: Mapping[str, str] | None = None, reference: str | None = None, **lot_terms: Any) -> Write:
    """Free credits (``credits:grant``): a promotional lot by default, spent before paid ones.

    ``lot_terms`` as a purchase's: ``expires_at``, ``expires_in`` (seconds), ``priority`` (0-100).
    """
    return _write(user_id, "grant", _count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, category=category, status="completed",
                  **_lot_terms(lot_terms))


def reserve(user_id: UserId, credits: int, description: str, *, amount: Amount = "0",
            hold_expires_in: int | None = None, idempotency_key: str | None = None,
            metadata: Mapping[str, str] | None = None, reference: str | None = None) -> Write:
    """A hold of ``credits`` before a job (a pending usage); settle it completed or failed later."""
    return _write(user_id, "usage", -_count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, amount=_dollars(amount), status="pending",
                  hold_expires_in=hold_expires_in)


def spend(user_id: UserId, credits: int, description: str, *, amount: Amount = "0",
          idempotency_key: str | None = None, metadata: Mapping[str, str] | None = None,
          reference: str | None = None) -> Write:
    """``credits`` spent at once (a completed usage)."""
    return _write(user_id, "usage", -_count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, amount=_dollars(amount), status="completed")


def refund(user_id: UserId, purchase_id: UserId, credits: int, amount: Amount, description: str = "Refund", *,
           idempotency_key: str | None = None, metadata: Mapping[str, str] | None = None,
           reference: str | None = None) -> Write:
    """``credits`` and ``amount`` dollars of a completed purchase of the user, given back."""
    return _write(user_id, "refund", -_count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, amount=_dollars(amount), refunds=str(purchase_id))


def reverse(user_id: UserId, usage_id: UserId, credits: int, description: str = "Reversal", *,
            idempotency_key: str | None = None, metadata: Mapping[str, str] | None = None,
            reference: str | None = None) -> Write:
    """``credits`` of a completed usage of the user, given back to the lots it took them from."""
    return _write(user_id, "reversal", _count(credits), description, idempotency_key=idempotency_key,
                  metadata=metadata, reference=reference, reverses=str(usage_id))
