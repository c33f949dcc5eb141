"""The feed's readers: a NOTIFY that wakes a waiting webhook worker, and the JetStream relay's lease.

``event_relays.wake_until`` is set by a worker about to wait for new events
(and cleared when it wakes); a statement that adds events notifies channel
``ledger_events`` only while some worker's ``wake_until`` lies ahead. A
notifying commit takes PostgreSQL's notification-queue lock, one commit at a
time, so writes pay for it only while a worker is idle and waiting, never
under the load that keeps a worker busy (ADR 0006, decision 10).

``holder`` and ``lease_until`` let one relay at a time publish into
JetStream when every webhook worker runs one: the others wait for the lease.

A worker now leases due deliveries endpoint by endpoint, at most
``WEBHOOK_ENDPOINT_CONCURRENCY`` of one endpoint's at once, so that a slow
endpoint's backlog cannot take every sending thread: the index of due
deliveries leads with the endpoint (rebuilt CONCURRENTLY).

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
    _due_index(["endpoint_id", "next_attempt_at"])


def _due_index(columns):
    """Replace the index of due deliveries with one on ``columns``: built beside it, then swapped in.

    CONCURRENTLY, so the worker's writes go on; the old one serves the worker's claims until then.
    """
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_webhook_deliveries_due_next")
        op.create_index("ix_webhook_deliveries_due_next", "webhook_deliveries", columns,
                        postgresql_where=sa.text("status = 'pending'"), postgresql_concurrently=True)
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_webhook_deliveries_due")
        op.execute("ALTER INDEX ix_webhook_deliveries_due_next RENAME TO ix_webhook_deliveries_due")


def downgrade():
    _due_index(["next_attempt_at"])
    op.execute("DROP TRIGGER ledger_events_wake ON ledger_events")
    op.execute("DROP FUNCTION ledger_events_wake()")
    for column in ("lease_until", "holder", "wake_until"):
        op.drop_column("event_relays", column)
