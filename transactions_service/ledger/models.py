"""The ledger's tables: users, transactions, balances, lots, events and idempotency records.

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
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    JSON,
    Numeric,
    SmallInteger,
    Text,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import base as postgresql_types
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from ..extensions import db
from ..http import MAX_IDEMPOTENCY_KEY_LENGTH

MAX_CREDITS = 1_000_000_000
MAX_AMOUNT = Decimal("9999999999.99")
MAX_DESCRIPTION_LENGTH = 500
PENDING_USAGE = "status = 'pending' AND type = 'usage'"
# Which way each type moves credits (an adjustment either way, never by nothing).
CREDITS_SIGNS = (
    "(type IN ('purchase', 'grant', 'reversal') AND credits > 0)"
    " OR (type IN ('usage', 'refund', 'expiration') AND credits < 0)"
    " OR (type = 'adjustment' AND credits <> 0)"
)
HOLD_EXPIRED = "hold_expired"


class User(db.Model):
    """A user as this service knows one: an id the identity provider owns."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TransactionType(enum.StrEnum):
    PURCHASE = "purchase"
    USAGE = "usage"
    GRANT = "grant"
    # Credits (and dollars) a purchase gave back: ``refunds`` names the purchase.
    REFUND = "refund"
    # Credits a usage gave back to the lots it consumed: ``reverses`` names the usage.
    REVERSAL = "reversal"
    # Support's correction, with a reason: adds a lot, or spends in spend order.
    ADJUSTMENT = "adjustment"
    # Written by the service only: credits of a lot that expired.
    EXPIRATION = "expiration"


class LotCategory(enum.StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


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
        CheckConstraint(CREDITS_SIGNS, name="credits_sign_matches_type"),
        CheckConstraint(
            "(lot_expires_at IS NULL AND lot_priority IS NULL AND lot_category IS NULL)"
            " OR type IN ('purchase', 'grant', 'adjustment')",
            name="lot_terms_only_on_credits",
        ),
        # A refund names its purchase and a reversal its usage; no other row names either.
        CheckConstraint("(type = 'refund') = (refunds IS NOT NULL)", name="refunds_only_on_refund"),
        CheckConstraint("(type = 'reversal') = (reverses IS NOT NULL)", name="reverses_only_on_reversal"),
        CheckConstraint(
            "refunded_amount = 0 OR (type = 'purchase' AND refunded_amount BETWEEN 0 AND amount)",
            name="refunded_within_amount",
        ),
        CheckConstraint(
            "reversed_credits = 0 OR (type = 'usage' AND reversed_credits BETWEEN 0 AND -credits)",
            name="reversed_within_usage",
        ),
        CheckConstraint("lot_priority BETWEEN 0 AND 100", name="lot_priority_range"),
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
        # A usage's reversals: what each of its lots has had back already.
        Index("ix_user_transactions_reverses", "reverses", postgresql_where=db.text("reverses IS NOT NULL")),
        # The caller's own id for an entry: once per user and type; found by user and reference.
        Index("uq_user_transactions_reference", "user_id", "reference", "type", unique=True,
              postgresql_where=db.text("reference IS NOT NULL")),
        CheckConstraint("char_length(reference) BETWEEN 1 AND 255", name="reference_length"),
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
    # The terms of the lot a purchase or grant creates (a pending purchase's, until it completes).
    lot_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lot_priority: Mapped[int | None] = mapped_column(SmallInteger)
    lot_category: Mapped[LotCategory | None] = mapped_column(
        Enum(LotCategory, name="lot_category", values_callable=_values)
    )
    # The purchase a refund gives back, the usage a reversal gives back.
    refunds: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_transactions.id"))
    reverses: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_transactions.id"))
    # What has been given back so far: a purchase's dollars refunded, a usage's credits reversed. Kept
    # on the row that the next refund or reversal locks, so that concurrent ones cannot both fit.
    refunded_amount: Mapped[Decimal] = mapped_column(Numeric(12, 2), server_default="0")
    reversed_credits: Mapped[int] = mapped_column(Integer, server_default="0")
    # The caller's own: a JSON object of strings, kept as written ({} when none), and its id for the entry.
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, server_default=db.text("'{}'::json"))
    reference: Mapped[str | None] = mapped_column(Text)


class CreditLot(db.Model):
    """Credits that entered together (a purchase, a grant), spent in spend order and perhaps expiring.

    ``remaining`` is neither spent, held nor expired; ``held`` is reserved by
    pending usage. A lot is changed only together with a posting saying how.
    """

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("remaining >= 0", name="remaining_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("remaining + held <= credits", name="within_credits"),
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority_range"),
        CheckConstraint("cost_basis >= 0", name="cost_basis_not_negative"),
        # A user's lots with credits in them: the spend's candidates, and the ones that may have lapsed.
        # The condition is the generated has_credits, not remaining or held themselves: an index on a
        # column a spend changes would make every spend write a new entry in every index of the lot
        # (no HOT update), where now only the spend that empties a lot (or refills it) does.
        Index("ix_credit_lots_user_open", "user_id", "expires_at", postgresql_where=db.text("has_credits")),
        Index("ix_credit_lots_expiring", "expires_at", postgresql_where=db.text("has_credits")),
        Index("ix_credit_lots_user_created", "user_id", db.text("created_at DESC"), db.text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    # The purchase or grant that created it; NULL for the opening lot a balance became (migration 0005).
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_transactions.id"), unique=True)
    category: Mapped[LotCategory] = mapped_column(Enum(LotCategory, name="lot_category", values_callable=_values))
    credits: Mapped[int] = mapped_column(Integer)
    remaining: Mapped[int] = mapped_column(Integer)
    held: Mapped[int] = mapped_column(Integer, server_default="0")
    has_credits: Mapped[bool] = mapped_column(Boolean, Computed("remaining + held > 0", persisted=True))
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="50")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Dollars per credit: the purchase's amount / credits; 0 for grants.
    cost_basis: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LotPosting(db.Model):
    """One change to one lot, never updated or deleted (a trigger refuses both).

    ``credits`` changes the lot's ``remaining + held`` (so a user's postings
    sum to the balance) and ``held`` its held credits (they sum to held);
    ``balance_after`` and ``held_after`` are the user's totals after it.
    """

    __tablename__ = "lot_postings"
    __table_args__ = (
        CheckConstraint("credits <> 0 OR held <> 0", name="changes_something"),
        Index("ix_lot_postings_transaction", "transaction_id"),
        Index("ix_lot_postings_lot", "lot_id"),
        # A user's postings in the order they were stamped: the books at an instant are one seek.
        Index("ix_lot_postings_user_time", "user_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # NULL for the opening posting of a lot a balance became (migration 0005).
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("user_transactions.id"))
    lot_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_lots.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    credits: Mapped[int] = mapped_column(Integer)
    held: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    held_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UserBalance(db.Model):
    """The running totals of a user's ledger, read in O(1).

    ``balance`` is the sum of completed credits (and of the user's lots'
    ``remaining + held``, and of their postings' ``credits``) and ``held`` the
    credits reserved by pending usage; it changes in the same statement as the
    lots and postings. The CHECKs make ``balance - held`` (available
    credits) impossible to take below zero, whatever code writes here.
    """

    __tablename__ = "user_balances"
    __table_args__ = (
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("balance - held >= 0", name="available_not_negative"),
        CheckConstraint("low_balance_threshold >= 0", name="low_balance_threshold_not_negative"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, server_default="0")
    held: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The sequence of the user's latest event: each write adds its events' count under this row's lock,
    # so that a user's events are numbered in the order their writes commit.
    event_sequence: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # A balance.low event fires when a write takes available credits from at or above the threshold to
    # below it: the user's own when ``low_balance_own`` (null: no alert), else LOW_BALANCE_THRESHOLD.
    low_balance_own: Mapped[bool] = mapped_column(Boolean, server_default="false")
    low_balance_threshold: Mapped[int | None] = mapped_column(BigInteger)
    # When the user's latest posting was stamped: a write stamps its own no earlier (migration 0011), so
    # that a user's postings are in time order and the books at an instant are those before a point.
    posted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Xid8(UserDefinedType):
    """PostgreSQL's 64-bit transaction id (``xid8``), which never wraps around."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# So that reading the schema back (migration checks) knows the type too.
postgresql_types.ischema_names.setdefault("xid8", Xid8)


EVENT_TYPES = ("transaction.created", "transaction.updated", "lot.expired", "balance.low")


class LedgerEvent(db.Model):
    """What a write changed, as the API showed it at that moment, written in the write's own statement.

    The feed orders events by ``(xid, position)``: the writing transaction's id,
    then the order within it. It hands out an event only once every transaction
    with a smaller id has ended, so a reader paging by that key never skips one
    that commits late (ADR 0006). ``sequence`` numbers each user's events in
    the order their writes committed.
    """

    __tablename__ = "ledger_events"
    __table_args__ = (
        CheckConstraint(f"type IN ({', '.join(repr(kind) for kind in EVENT_TYPES)})", name="type_known"),
        CheckConstraint("sequence > 0", name="sequence_positive"),
        Index("ix_ledger_events_feed", "xid", "position"),
        # Events are pruned by age; a BRIN index costs next to nothing on an append-only table.
        Index("ix_ledger_events_created_at", "created_at", postgresql_using="brin"),
    )

    position: Mapped[int] = mapped_column(BigInteger, db.Identity(always=True), primary_key=True)
    xid: Mapped[str] = mapped_column(Xid8, server_default=func.pg_current_xact_id())
    id: Mapped[uuid.UUID] = mapped_column(Uuid, server_default=func.gen_random_uuid())
    type: Mapped[str] = mapped_column(Text)
    # No foreign key: the row the event is about has one, and an event outlives nothing it names.
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    sequence: Mapped[int] = mapped_column(BigInteger)
    # json, not jsonb: kept as written, its members in the order the API shows them.
    data: Mapped[str] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TransactionMetadata(db.Model):
    """One metadata pair of a transaction, as an index: a page filtered by a pair is a range of it.

    Written by the write's own statement from the pairs it records on the row (``metadata``, the
    record itself); never changed, as the row's metadata never is.
    """

    __tablename__ = "transaction_metadata"
    __table_args__ = (
        Index("ix_transaction_metadata_lookup", "user_id", "key", "value", db.text("created_at DESC"),
              db.text("transaction_id DESC")),
    )

    transaction_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("user_transactions.id"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageRollup(db.Model):
    """Credits spent per user and period: completed usage less what reversals gave back.

    ``key`` and ``value`` are ``''`` for the total, else a metadata pair of a
    key the service groups by (``USAGE_GROUP_KEYS``). Each write that spends
    or gives back adds to three periods, in its own statement (migration
    0011): its quarter hour, hour and UTC day (``grain``, in minutes). A usage
    summary reads whole days and hours where a bucket holds them, and quarters
    at its edges: every time zone's midnight is the start of a quarter.
    """

    __tablename__ = "usage_rollup"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    grain: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    period: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    credits: Mapped[int] = mapped_column(BigInteger)


class EventRelay(db.Model):
    """How far a relay of the feed has got: the last event it handed on, as a feed position."""

    __tablename__ = "event_relays"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    after_xid: Mapped[int] = mapped_column(BigInteger)
    after_position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set by a worker waiting for events: until then, the writes that add events notify it (migration 0009).
    wake_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The relay that may publish (one at a time, when several workers run one), and until when.
    holder: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
