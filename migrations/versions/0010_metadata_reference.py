"""Every transaction carries the caller's metadata (a JSON object) and, optionally, its own reference.

``metadata`` is ``json`` (kept as written, members in the caller's order),
never NULL: ``{}`` when none. Adding a column with a constant default
rewrites nothing, so writes go on while this runs. ``reference`` is unique
per user and type where present: the index is built CONCURRENTLY (it leads
with the user and the reference, so that it also finds a user's transaction
by reference, whatever its type).

``transaction_metadata`` is the index of the metadata that PostgreSQL cannot
build on the json column: one row per pair, written by the write's own
statement, so that a history page filtered by a pair is a range of
``(user_id, key, value, created_at, transaction_id)`` and costs what an
unfiltered page does, however long the history.

Revision ID: 0010_metadata_reference
Revises: 0009_wake_and_lease
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_metadata_reference"
down_revision = "0009_wake_and_lease"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("user_transactions", sa.Column("metadata", sa.JSON(), server_default=sa.text("'{}'::json"),
                                                 nullable=False))
    op.add_column("user_transactions", sa.Column("reference", sa.Text(), nullable=True))
    op.create_check_constraint(op.f("ck_user_transactions_reference_length"), "user_transactions",
                               "char_length(reference) BETWEEN 1 AND 255")
    op.create_table(
        "transaction_metadata",
        sa.Column("transaction_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["transaction_id"], ["user_transactions.id"],
                                name=op.f("fk_transaction_metadata_transaction_id_user_transactions")),
        sa.PrimaryKeyConstraint("transaction_id", "key", name=op.f("pk_transaction_metadata")),
    )
    op.create_index("ix_transaction_metadata_lookup", "transaction_metadata",
                    ["user_id", "key", "value", sa.text("created_at DESC"), sa.text("transaction_id DESC")])
    with op.get_context().autocommit_block():
        op.create_index("uq_user_transactions_reference", "user_transactions", ["user_id", "reference", "type"],
                        unique=True, postgresql_where=sa.text("reference IS NOT NULL"),
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("uq_user_transactions_reference", "user_transactions", postgresql_concurrently=True,
                      if_exists=True)
    op.drop_table("transaction_metadata")
    op.drop_constraint(op.f("ck_user_transactions_reference_length"), "user_transactions", type_="check")
    op.drop_column("user_transactions", "reference")
    op.drop_column("user_transactions", "metadata")
