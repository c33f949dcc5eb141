"""The feed's readers: a NOTIFY that wakes a waiting webhook worker, and the JetStream relay's lease.

``event_relays.wake_until`` is set by a worker about to wait for new events
(and cleared when it wakes); a statement that adds events notifies channel
``ledger_events`` only while some worker's ``wake_until`` lies ahead. A
notifying commit takes PostgreSQL's notification-queue lock, one commit at a
time, so writes pay for it only while a worker is idle and waiting, never
under the load that keeps a worker busy (ADR 0006, decision 10).

``holder`` and ``lease_until`` let one relay at a time publish into
JetStream when every webhook worker runs one: the others wait for the lease.

Adding the trigger takes a lock that pauses writes to ledger_events for an
instant; nothing is rewritten.

Revision ID: 0009_wake_and_lease
Revises: 0008_webhooks
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_wake_and_lease"
down_revision = "0008_webhooks"
branch_labels = None
depends_on = None

WAKE_FUNCTION = """
CREATE FUNCTION ledger_events_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM event_relays WHERE wake_until > now()) THEN
        PERFORM pg_notify('ledger_events', '');
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade():
    op.add_column("event_relays", sa.Column("wake_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("event_relays", sa.Column("holder", sa.Text(), nullable=True))
    op.add_column("event_relays", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.execute(WAKE_FUNCTION)
    op.execute(
        "CREATE TRIGGER ledger_events_wake AFTER INSERT ON ledger_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_wake()"
    )


def downgrade():
    op.execute("DROP TRIGGER ledger_events_wake ON ledger_events")
    op.execute("DROP FUNCTION ledger_events_wake()")
    for column in ("lease_until", "holder", "wake_until"):
        op.drop_column("event_relays", column)
