"""Webhooks: endpoints, deliveries and their attempts; the webhooks:manage scope.

New tables only (and a wider CHECK on api_keys), so writes go on while this
runs.

Revision ID: 0008_webhooks
Revises: 0007_ledger_events
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_webhooks"
down_revision = "0007_ledger_events"
branch_labels = None
depends_on = None

OLD_SCOPES = (
    "'credits:adjust', 'credits:grant', 'events:read', 'purchases:write', 'transactions:read', 'usage:write',"
    " 'users:write'"
)
NEW_SCOPES = (
    "'credits:adjust', 'credits:grant', 'events:read', 'purchases:write', 'transactions:read', 'usage:write',"
    " 'users:write', 'webhooks:manage'"
)
EVENT_TYPES = "'transaction.created', 'transaction.updated', 'lot.expired', 'balance.low'"
NOW = sa.text("now()")


def upgrade():
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint(f"cardinality(event_types) >= 1 AND event_types <@ ARRAY[{EVENT_TYPES}]::text[]",
                           name=op.f("ck_webhook_endpoints_event_types_known")),
        sa.CheckConstraint("char_length(url) BETWEEN 1 AND 2048", name=op.f("ck_webhook_endpoints_url_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f("ck_webhook_deliveries_status_known")),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("uq_webhook_deliveries_endpoint_event", "webhook_deliveries", ["endpoint_id", "event_id"],
                    unique=True)
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries",
                    ["endpoint_id", sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"], ondelete="CASCADE",
                                name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "id"])
    _scopes(NEW_SCOPES)


def _scopes(scopes: str):
    op.drop_constraint(op.f("ck_api_keys_scopes_known"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_scopes_known"), "api_keys",
                               f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{scopes}]::text[]")


def downgrade():
    keys = op.get_bind().execute(sa.text("SELECT count(*) FROM api_keys WHERE 'webhooks:manage' = ANY(scopes)")).scalar()
    if keys:
        raise RuntimeError(f"{keys} keys with webhooks:manage exist: the previous schema has no place for them")
    _scopes(OLD_SCOPES)
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_endpoints"):
        op.drop_table(table)
