"""Credit lots and their postings; grants and expirations; the credits:grant scope.

Every balance becomes one paid, never-expiring lot (its ``remaining`` the
available credits, its ``held`` the credits pending usage holds), with an
opening posting and one posting per pending hold on it, so that from here on
a user's balance is the sum of their lots and of their postings. Postings are
append-only: a trigger refuses UPDATE and DELETE.

The deploy needs writes paused while it runs (stop the workers, migrate,
start the new release): a write of the previous release in between would
change a balance without its lot (docs/operations.md, Deploying).

Revision ID: 0005_credit_lots
Revises: 0004_api_keys
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_credit_lots"
down_revision = "0004_api_keys"
branch_labels = None
depends_on = None

PENDING_USAGE = "status = 'pending' AND type = 'usage'"
lot_category = postgresql.ENUM("paid", "promotional", name="lot_category", create_type=False)
OLD_SIGNS = "(type = 'purchase' AND credits > 0) OR (type = 'usage' AND credits < 0)"
NEW_SIGNS = "(type IN ('purchase', 'grant') AND credits > 0) OR (type IN ('usage', 'expiration') AND credits < 0)"
OLD_SCOPES = "'purchases:write', 'transactions:read', 'usage:write', 'users:write'"
NEW_SCOPES = "'credits:grant', 'purchases:write', 'transactions:read', 'usage:write', 'users:write'"
APPEND_ONLY = """
CREATE FUNCTION lot_postings_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'lot_postings is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$
"""


def upgrade():
    with op.get_context().autocommit_block():  # a new enum value cannot be used in the transaction that adds it
        op.execute("ALTER TYPE transaction_type ADD VALUE IF NOT EXISTS 'grant'")
        op.execute("ALTER TYPE transaction_type ADD VALUE IF NOT EXISTS 'expiration'")
    lot_category.create(op.get_bind(), checkfirst=True)
    _transaction_columns()
    _lots_and_postings()
    _scopes(NEW_SCOPES)
    _balances_become_lots()


def _transaction_columns():
    op.add_column("user_transactions", sa.Column("lot_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("user_transactions", sa.Column("lot_priority", sa.SmallInteger(), nullable=True))
    op.add_column("user_transactions", sa.Column("lot_category", lot_category, nullable=True))
    op.drop_constraint(op.f("ck_user_transactions_credits_sign_matches_type"), "user_transactions", type_="check")
    op.create_check_constraint(op.f("ck_user_transactions_credits_sign_matches_type"), "user_transactions", NEW_SIGNS)
    op.create_check_constraint(op.f("ck_user_transactions_lot_terms_only_on_credits"),
        "user_transactions",
        "(lot_expires_at IS NULL AND lot_priority IS NULL AND lot_category IS NULL) OR type IN ('purchase', 'grant')",
    )
    op.create_check_constraint(op.f("ck_user_transactions_lot_priority_range"), "user_transactions", "lot_priority BETWEEN 0 AND 100"
    )


def _lots_and_postings():
    op.create_table(
        "credit_lots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=True),
        sa.Column("category", lot_category, nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), server_default="0", nullable=False),
        sa.Column("priority", sa.SmallInteger(), server_default="50", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cost_basis", sa.Numeric(20, 10), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_lots_credits_positive")),
        sa.CheckConstraint("remaining >= 0", name=op.f("ck_credit_lots_remaining_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_credit_lots_held_not_negative")),
        sa.CheckConstraint("remaining + held <= credits", name=op.f("ck_credit_lots_within_credits")),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name=op.f("ck_credit_lots_priority_range")),
        sa.CheckConstraint("cost_basis >= 0", name=op.f("ck_credit_lots_cost_basis_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_lots_user_id_users")),
        sa.ForeignKeyConstraint(
            ["transaction_id"], ["user_transactions.id"], name=op.f("fk_credit_lots_transaction_id_user_transactions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_lots")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_credit_lots_transaction_id")),
    )
    op.create_index("ix_credit_lots_user_open", "credit_lots", ["user_id", "expires_at"],
                    postgresql_where=sa.text("remaining > 0"))
    op.create_index("ix_credit_lots_expiring", "credit_lots", ["expires_at"], postgresql_where=sa.text("remaining > 0"))
    op.create_index("ix_credit_lots_user_created", "credit_lots",
                    ["user_id", sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_table(
        "lot_postings",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=True),
        sa.Column("lot_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("held_after", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("credits <> 0 OR held <> 0", name=op.f("ck_lot_postings_changes_something")),
        sa.ForeignKeyConstraint(
            ["transaction_id"], ["user_transactions.id"], name=op.f("fk_lot_postings_transaction_id_user_transactions")
        ),
        sa.ForeignKeyConstraint(["lot_id"], ["credit_lots.id"], name=op.f("fk_lot_postings_lot_id_credit_lots")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_lot_postings_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lot_postings")),
    )
    op.create_index("ix_lot_postings_transaction", "lot_postings", ["transaction_id"])
    op.create_index("ix_lot_postings_lot", "lot_postings", ["lot_id"])
    op.create_index("ix_lot_postings_user", "lot_postings", ["user_id", "id"])
    op.execute(APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER lot_postings_append_only BEFORE UPDATE OR DELETE ON lot_postings"
        " FOR EACH ROW EXECUTE FUNCTION lot_postings_append_only()"
    )


def _scopes(scopes: str):
    op.drop_constraint(op.f("ck_api_keys_scopes_known"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_scopes_known"), "api_keys", f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{scopes}]::text[]"
    )


def _balances_become_lots():
    """One paid lot per balance, its opening posting, and a posting per pending hold on it."""
    op.execute(
        "CREATE TEMPORARY TABLE opening ON COMMIT DROP AS"
        " SELECT gen_random_uuid() AS lot_id, b.user_id, b.balance, b.held,"
        " coalesce((SELECT sum(amount) / nullif(sum(credits), 0) FROM user_transactions"
        "   WHERE user_id = b.user_id AND type = 'purchase' AND status = 'completed'), 0) AS cost_basis"
        " FROM user_balances AS b WHERE b.balance > 0"
    )
    op.execute(
        "INSERT INTO credit_lots (id, user_id, category, credits, remaining, held, cost_basis)"
        " SELECT lot_id, user_id, 'paid', balance, balance - held, held, cost_basis FROM opening"
    )
    op.execute(
        "INSERT INTO lot_postings (lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT lot_id, user_id, balance, 0, balance, 0, now() FROM opening"
    )
    op.execute(
        "INSERT INTO lot_postings (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)"
        " SELECT t.id, o.lot_id, t.user_id, 0, -t.credits, o.balance,"
        " sum(-t.credits) OVER (PARTITION BY t.user_id ORDER BY t.created_at, t.id), now()"
        " FROM user_transactions AS t JOIN opening AS o USING (user_id)"
        " WHERE t.status = 'pending' AND t.type = 'usage'"
    )


def downgrade():
    bind = op.get_bind()
    newer = bind.execute(sa.text("SELECT count(*) FROM user_transactions WHERE type IN ('grant', 'expiration')")).scalar()
    if newer:
        raise RuntimeError(f"{newer} grants or expirations exist: the previous schema has no place for them")
    op.execute("DROP TRIGGER lot_postings_append_only ON lot_postings")
    op.execute("DROP FUNCTION lot_postings_append_only()")
    op.drop_table("lot_postings")
    op.drop_table("credit_lots")
    _scopes(OLD_SCOPES)
    op.drop_constraint(op.f("ck_user_transactions_lot_priority_range"), "user_transactions", type_="check")
    op.drop_constraint(op.f("ck_user_transactions_lot_terms_only_on_credits"), "user_transactions", type_="check")
    op.drop_constraint(op.f("ck_user_transactions_credits_sign_matches_type"), "user_transactions", type_="check")
    op.drop_column("user_transactions", "lot_category")
    op.drop_column("user_transactions", "lot_priority")
    op.drop_column("user_transactions", "lot_expires_at")
    lot_category.drop(bind, checkfirst=True)
    # PostgreSQL cannot drop an enum value: the type is made again without the two, and what
    # compares the column with a value of the old type is dropped around the change and made again.
    op.drop_index("ix_user_transactions_user_holds", table_name="user_transactions")
    op.drop_index("ix_user_transactions_expiring_holds", table_name="user_transactions")
    # Named as 0002 named it (the naming convention applied to the full name): that is what 0002's downgrade drops.
    op.drop_constraint("ck_user_transactions_hold_only_on_usage", "user_transactions", type_="check")
    op.execute("ALTER TYPE transaction_type RENAME TO transaction_type_with_lots")
    op.execute("CREATE TYPE transaction_type AS ENUM ('purchase', 'usage')")
    op.execute(
        "ALTER TABLE user_transactions ALTER COLUMN type TYPE transaction_type USING type::text::transaction_type"
    )
    op.execute("DROP TYPE transaction_type_with_lots")
    op.create_check_constraint(op.f("ck_user_transactions_credits_sign_matches_type"), "user_transactions", OLD_SIGNS)
    op.create_check_constraint("ck_user_transactions_hold_only_on_usage", "user_transactions", "hold_expires_at IS NULL OR type = 'usage'"
    )
    op.create_index("ix_user_transactions_expiring_holds", "user_transactions", ["hold_expires_at"],
                    postgresql_where=sa.text(PENDING_USAGE))
    op.create_index("ix_user_transactions_user_holds", "user_transactions", ["user_id", "hold_expires_at"],
                    postgresql_where=sa.text(PENDING_USAGE))
