"""Idempotency records name their user, so that they can live on the user's shard.

Sharding by user (ADR 0001, "Growing past one machine") needs every hot table
to carry ``user_id``; the ledger and balance tables do, and this gives the
idempotency records the same column. It is nullable, so the previous release
keeps recording keys while this runs; records written before it are filled in
from their transaction. Requiring it (NOT NULL, and the key's uniqueness per
user) belongs to the step that actually distributes the tables.

Revision ID: 0003_idempotency_user
Revises: 0002_hold_expiry
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_idempotency_user"
down_revision = "0002_hold_expiry"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("idempotency_keys", sa.Column("user_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE idempotency_keys AS k SET user_id = t.user_id FROM user_transactions AS t "
        "WHERE t.id = k.transaction_id AND k.user_id IS NULL"
    )


def downgrade():
    op.drop_column("idempotency_keys", "user_id")
