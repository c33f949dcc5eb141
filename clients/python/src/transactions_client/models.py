"""What the service answers, as typed values: a transaction, a balance, a user, a batch result.

Money is ``Decimal`` and credits are ``int`` (signed as the ledger stores them: a usage
is negative), ids are ``uuid.UUID`` and timestamps are timezone-aware ``datetime``.
Members the client does not know yet are ignored, so a newer service does not break it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from .errors import ProblemError, problem_from_body

TransactionType = Literal["purchase", "usage", "grant", "refund", "reversal", "adjustment", "expiration"]
TransactionStatus = Literal["completed", "pending", "failed"]
Settlement = Literal["completed", "failed"]


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class Transaction:
    """One ledger entry. ``replayed``: this answer replays an earlier write with the same idempotency key."""

    id: uuid.UUID
    user_id: uuid.UUID
    type: TransactionType
    amount: Decimal
    credits: int
    description: str
    status: TransactionStatus
    created_at: datetime
    updated_at: datetime
    hold_expires_at: datetime | None
    refunds: uuid.UUID | None
    reverses: uuid.UUID | None
    metadata: dict[str, str]
    reference: str | None
    replayed: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, replayed: bool = False) -> Transaction:
        return cls(
            id=uuid.UUID(body["id"]),
            user_id=uuid.UUID(body["user_id"]),
            type=body["type"],
            amount=Decimal(body["amount"]),
            credits=int(body["credits"]),
            description=body["description"],
            status=body["status"],
            created_at=datetime.fromisoformat(body["created_at"]),
            updated_at=datetime.fromisoformat(body["updated_at"]),
            hold_expires_at=_timestamp(body.get("hold_expires_at")),
            refunds=_uuid(body.get("refunds")),
            reverses=_uuid(body.get("reverses")),
            metadata=dict(body.get("metadata") or {}),
            reference=body.get("reference"),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class Expiry:
    """The soonest-expiring lot with available credits."""

    credits: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Balance:
    """A user's totals: ``available`` = ``balance`` - ``held`` = ``paid`` + ``promotional``."""

    user_id: uuid.UUID
    balance: int
    held: int
    available: int
    paid: int
    promotional: int
    next_expiry: Expiry | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Balance:
        expiry = body.get("next_expiry")
        return cls(
            user_id=uuid.UUID(body["user_id"]),
            balance=int(body["balance"]),
            held=int(body["held"]),
            available=int(body["available"]),
            paid=int(body["paid"]),
            promotional=int(body["promotional"]),
            next_expiry=None if expiry is None else Expiry(int(expiry["credits"]),
                                                           datetime.fromisoformat(expiry["expires_at"])),
        )


@dataclass(frozen=True, slots=True)
class User:
    """A user the ledger knows. ``created``: this call registered it (it was not known before)."""

    id: uuid.UUID
    created_at: datetime
    low_balance_threshold: int | None
    created: bool

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, created: bool) -> User:
        return cls(uuid.UUID(body["id"]), datetime.fromisoformat(body["created_at"]),
                   body.get("low_balance_threshold"), created)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One item's answer in a batch: what a single write of it would have answered.

    ``index`` is the item's position in the list given to ``record_batch``. Exactly one of
    ``transaction`` and ``problem`` is set; ``problem`` is the exception a single write would
    have raised (``raise result.problem`` to treat it so).
    """

    index: int
    status: int
    replayed: bool
    transaction: Transaction | None
    problem: ProblemError | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, offset: int = 0) -> BatchResult:
        transaction, problem = body.get("transaction"), body.get("problem")
        return cls(
            index=offset + int(body["index"]),
            status=int(body["status"]),
            replayed=bool(body["replayed"]),
            transaction=None if transaction is None else Transaction.from_json(transaction,
                                                                               replayed=bool(body["replayed"])),
            problem=None if problem is None else problem_from_body(problem),
        )
