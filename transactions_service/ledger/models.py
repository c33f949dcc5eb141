"""The ledger's tables: users, transactions, per-user balances and idempotency records.

The tables and their guards (CHECK, FOREIGN KEY, UNIQUE), for migrations and
for the tests that look at rows; every statement the service runs on them is
in ``store``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    Uuid,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..http import MAX_IDEMPOTENCY_KEY_LENGTH

MAX_CREDITS = 1_000_000_000
MAX_AMOUNT = Decimal("9999999999.99")
MAX_DESCRIPTION_LENGTH = 500
PENDING_USAGE = "status = 'pending' AND type = 'usage'"
HOLD_EXPIRED = "hold_expired"


class User(db.Model):
    """A user as this service knows one: an id the identity provider owns."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TransactionType(enum.StrEnum):
    PURCHASE = "purchase"
    USAGE = "usage"


class TransactionStatus(enum.StrEnum):
    COMPLETED = "completed"
    PENDING = "pending"
    FAILED = "failed"


def _values(enum_class: type[enum.Enum]) -> list[str]:
    return [member.value for member in enum_class]


class UserTransaction(db.Model):
    """One ledger entry. Credits are signed: purchases add, usage spends."""

    __tablename__ = "user_transactions"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint(
            "(type = 'purchase' AND credits > 0) OR (type = 'usage' AND credits < 0)",
            name="credits_sign_matches_type",
        ),
        CheckConstraint(f"credits BETWEEN -{MAX_CREDITS} AND {MAX_CREDITS}", name="credits_bounded"),
        CheckConstraint(
            f"char_length(description) BETWEEN 1 AND {MAX_DESCRIPTION_LENGTH}", name="description_length"
        ),
        CheckConstraint("hold_expires_at IS NULL OR type = 'usage'", name="hold_only_on_usage"),
        Index("ix_user_transactions_history", "user_id", db.text("created_at DESC"), db.text("id DESC")),
        # Small partial indexes over live holds only: for the expiry job, and per user for balance reads.
        Index("ix_user_transactions_expiring_holds", "hold_expires_at", postgresql_where=db.text(PENDING_USAGE)),
        Index(
            "ix_user_transactions_user_holds", "user_id", "hold_expires_at", postgresql_where=db.text(PENDING_USAGE)
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    type: Mapped[TransactionType] = mapped_column(
        Enum(TransactionType, name="transaction_type", values_callable=_values)
    )
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    credits: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[TransactionStatus] = mapped_column(
        Enum(TransactionStatus, name="transaction_status", values_callable=_values)
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When a pending usage's hold lapses (NULL for every other row).
    hold_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why the service itself failed the row (e.g. "hold_expired"); NULL when a caller settled it.
    failure_reason: Mapped[str | None] = mapped_column(Text)


class UserBalance(db.Model):
    """The running totals of a user's ledger, read in O(1).

    ``balance`` is the sum of completed credits and ``held`` the credits
    reserved by pending usage. The CHECKs make ``balance - held`` (available
    credits) impossible to take below zero, whatever code writes here.
    """

    __tablename__ = "user_balances"
    __table_args__ = (
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("balance - held >= 0", name="available_not_negative"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IdempotencyRecord(db.Model):
    """The first response to a write made with an ``Idempotency-Key``.

    Keys are scoped to the calling service. A retry with the same key and the
    same request replays ``response_body`` byte for byte; the primary key makes two
    concurrent first attempts impossible.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint(
            f"char_length(key) BETWEEN 1 AND {MAX_IDEMPOTENCY_KEY_LENGTH}", name="key_length"
        ),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    caller: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(SmallInteger)
    response_body: Mapped[str] = mapped_column(Text)
    transaction_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The transaction's user, so that records can be distributed with the user's other rows.
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
