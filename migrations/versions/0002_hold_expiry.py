"""Holds expire: pending usage records when its hold lapses, and why a row failed.

Both columns are nullable, so the previous release keeps inserting rows while
this runs; the indexes are built CONCURRENTLY so that writes are not blocked.
Pending usage written before this revision gets the default one-hour hold.

Revision ID: 0002_hold_expiry
Revises: 0001_ledger
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_hold_expiry"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None

PENDING_USAGE = "status = 'pending' AND type = 'usage'"


def upgrade():
    op.add_column("user_transactions", sa.Column("hold_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("user_transactions", sa.Column("failure_reason", sa.Text(), nullable=True))
    op.create_check_constraint(
        "ck_user_transactions_hold_only_on_usage",
        "user_transactions",
        "hold_expires_at IS NULL OR type = 'usage'",
    )
    op.execute(
        "UPDATE user_transactions SET hold_expires_at = created_at + interval '1 hour' "
        f"WHERE {PENDING_USAGE} AND hold_expires_at IS NULL"
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_user_transactions_expiring_holds",
            "user_transactions",
            ["hold_expires_at"],
            postgresql_where=sa.text(PENDING_USAGE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            "ix_user_transactions_user_holds",
            "user_transactions",
            ["user_id", "hold_expires_at"],
            postgresql_where=sa.text(PENDING_USAGE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_user_transactions_user_holds", "user_transactions", postgresql_concurrently=True, if_exists=True)
        op.drop_index(
            "ix_user_transactions_expiring_holds", "user_transactions", postgresql_concurrently=True, if_exists=True
        )
    op.drop_constraint("ck_user_transactions_hold_only_on_usage", "user_transactions", type_="check")
    op.drop_column("user_transactions", "failure_reason")
    op.drop_column("user_transactions", "hold_expires_at")
