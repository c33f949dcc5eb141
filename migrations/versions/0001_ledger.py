"""The ledger: users, transactions, balances and idempotency keys.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

transaction_type = postgresql.ENUM("purchase", "usage", name="transaction_type", create_type=False)
transaction_status = postgresql.ENUM("completed", "pending", "failed", name="transaction_status", create_type=False)


def upgrade():
    transaction_type.create(op.get_bind(), checkfirst=True)
    transaction_status.create(op.get_bind(), checkfirst=True)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "user_transactions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("type", transaction_type, nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", transaction_status, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_user_transactions_amount_not_negative")),
        sa.CheckConstraint(
            "(type = 'purchase' AND credits > 0) OR (type = 'usage' AND credits < 0)",
            name=op.f("ck_user_transactions_credits_sign_matches_type"),
        ),
        sa.CheckConstraint(
            "credits BETWEEN -1000000000 AND 1000000000", name=op.f("ck_user_transactions_credits_bounded")
        ),
        sa.CheckConstraint(
            "char_length(description) BETWEEN 1 AND 500", name=op.f("ck_user_transactions_description_length")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_transactions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_transactions")),
    )
    op.create_index(
        "ix_user_transactions_history",
        "user_transactions",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "user_balances",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("held", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("held >= 0", name=op.f("ck_user_balances_held_not_negative")),
        sa.CheckConstraint("balance - held >= 0", name=op.f("ck_user_balances_available_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_balances_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_balances")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("char_length(key) BETWEEN 1 AND 255", name=op.f("ck_idempotency_keys_key_length")),
        sa.PrimaryKeyConstraint("caller", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade():
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_table("user_balances")
    op.drop_index("ix_user_transactions_history", table_name="user_transactions")
    op.drop_table("user_transactions")
    op.drop_table("users")
    transaction_status.drop(op.get_bind(), checkfirst=True)
    transaction_type.drop(op.get_bind(), checkfirst=True)
