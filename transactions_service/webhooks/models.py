"""The webhook tables: endpoints, one delivery per event and endpoint, and each attempt at one."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, SmallInteger, Text, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..ledger.models import EVENT_TYPES

DELIVERY_STATUSES = ("pending", "delivered", "failed")
_KNOWN_TYPES = ", ".join(repr(kind) for kind in EVENT_TYPES)


class WebhookEndpoint(db.Model):
    """A URL that receives the events of the types it names, signed with its secret.

    The secret is kept as it is, since every delivery is signed with it; during a
    rotation the previous one signs too, until ``previous_secret_until``.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint(
            f"cardinality(event_types) >= 1 AND event_types <@ ARRAY[{_KNOWN_TYPES}]::text[]", name="event_types_known"
        ),
        CheckConstraint("char_length(url) BETWEEN 1 AND 2048", name="url_length"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    description: Mapped[str] = mapped_column(Text, server_default="")
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # Since when every delivery to it has failed (null while it answers); it is disabled after
    # WEBHOOK_DISABLE_AFTER_DAYS of that.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(db.Model):
    """One event for one endpoint: the body as it is sent on every attempt, and when to try next."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in DELIVERY_STATUSES)})", name="status_known"),
        Index("uq_webhook_deliveries_endpoint_event", "endpoint_id", "event_id", unique=True),
        # Each endpoint's due deliveries, soonest first: a worker takes a few of every endpoint's (migration 0009).
        Index("ix_webhook_deliveries_due", "endpoint_id", "next_attempt_at", postgresql_where=db.text("status = 'pending'")),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", db.text("created_at DESC"), db.text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    # The event's id: the webhook-id of every attempt, so a receiver can drop what it has seen.
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A worker's claim: another may take the delivery once it passes (the worker died mid-attempt).
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(db.Model):
    """One try at a delivery: the answer's status code or the error, and the retry it scheduled."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(db.BigInteger, db.Identity(always=True), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
