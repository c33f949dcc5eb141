"""Refunds, reversals and adjustments; the credits:adjust scope.

A refund names the purchase it gives back (``refunds``), a reversal the usage
(``reverses``); the purchase keeps the dollars refunded so far and the usage
the credits reversed so far, on the row the next refund or reversal locks.

Every new column of user_transactions is nullable or has a constant default,
so adding them rewrites nothing. Its new foreign keys and CHECKs are added
``NOT VALID`` (no scan while the table is locked) and validated after that
transaction commits, which reads every row under a lock that lets writes go
on. So writes of the previous release may go on while this runs: they wait
only for a moment while the catalog changes and while credit_lots (one or a
few rows per user) is rewritten with its generated has_credits.

The lots' partial indexes move from ``remaining > 0`` to ``has_credits``, so
that a spend that leaves a lot with credits in it updates the lot in place
(HOT) instead of adding an entry to each of its indexes; postings lose their
per-user index, which no statement uses.

Revision ID: 0006_refunds_reversals
Revises: 0005_credit_lots
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_refunds_reversals"
down_revision = "0005_credit_lots"
branch_labels = None
depends_on = None

OLD_SIGNS = "(type IN ('purchase', 'grant') AND credits > 0) OR (type IN ('usage', 'expiration') AND credits < 0)"
NEW_SIGNS = (
    "(type IN ('purchase', 'grant', 'reversal') AND credits > 0)"
    " OR (type IN ('usage', 'refund', 'expiration') AND credits < 0)"
    " OR (type = 'adjustment' AND credits <> 0)"
)
OLD_LOT_TERMS = "(lot_expires_at IS NULL AND lot_priority IS NULL AND lot_category IS NULL) OR type IN ('purchase', 'grant')"
NEW_LOT_TERMS = (
    "(lot_expires_at IS NULL AND lot_priority IS NULL AND lot_category IS NULL)"
    " OR type IN ('purchase', 'grant', 'adjustment')"
)
OLD_SCOPES = "'credits:grant', 'purchases:write', 'transactions:read', 'usage:write', 'users:write'"
NEW_SCOPES = "'credits:adjust', 'credits:grant', 'purchases:write', 'transactions:read', 'usage:write', 'users:write'"
NEW_CHECKS = {
    "refunds_only_on_refund": "(type = 'refund') = (refunds IS NOT NULL)",
    "reverses_only_on_reversal": "(type = 'reversal') = (reverses IS NOT NULL)",
    "refunded_within_amount": "refunded_amount = 0 OR (type = 'purchase' AND refunded_amount BETWEEN 0 AND amount)",
    "reversed_within_usage": "reversed_credits = 0 OR (type = 'usage' AND reversed_credits BETWEEN 0 AND -credits)",
}


def upgrade():
    with op.get_context().autocommit_block():  # a new enum value cannot be used in the transaction that adds it
        for value in ("refund", "reversal", "adjustment"):
            op.execute(f"ALTER TYPE transaction_type ADD VALUE IF NOT EXISTS '{value}'")
    op.add_column("user_transactions", sa.Column("refunds", sa.Uuid(), nullable=True))
    op.add_column("user_transactions", sa.Column("reverses", sa.Uuid(), nullable=True))
    op.add_column("user_transactions",
                  sa.Column("refunded_amount", sa.Numeric(12, 2), server_default="0", nullable=False))
    op.add_column("user_transactions", sa.Column("reversed_credits", sa.Integer(), server_default="0", nullable=False))
    unchecked = []
    for column in ("refunds", "reverses"):
        unchecked.append(f"fk_user_transactions_{column}_user_transactions")
        op.execute(f"ALTER TABLE user_transactions ADD CONSTRAINT {unchecked[-1]}"
                   f" FOREIGN KEY ({column}) REFERENCES user_transactions (id) NOT VALID")
    replaced = {"credits_sign_matches_type": NEW_SIGNS, "lot_terms_only_on_credits": NEW_LOT_TERMS}
    for name in replaced:
        op.drop_constraint(op.f(f"ck_user_transactions_{name}"), "user_transactions", type_="check")
    for name, condition in {**replaced, **NEW_CHECKS}.items():
        unchecked.append(f"ck_user_transactions_{name}")
        op.execute(f"ALTER TABLE user_transactions ADD CONSTRAINT {unchecked[-1]} CHECK ({condition}) NOT VALID")
    _scopes(NEW_SCOPES)
    _hold_check_named(DOUBLED_HOLD_CHECK, HOLD_CHECK)
    _lot_indexes("has_credits")
    op.drop_index("ix_lot_postings_user", table_name="lot_postings")
    with op.get_context().autocommit_block():  # VALIDATE takes SHARE UPDATE EXCLUSIVE: writes go on meanwhile
        for name in unchecked:
            op.execute(f"ALTER TABLE user_transactions VALIDATE CONSTRAINT {name}")


def _lot_indexes(condition: str):
    """The lots' partial indexes, over the lots whose ``condition`` holds (made with or without has_credits)."""
    if condition == "has_credits":
        op.add_column("credit_lots", sa.Column("has_credits", sa.Boolean(),
                                               sa.Computed("remaining + held > 0", persisted=True), nullable=False))
    op.drop_index("ix_credit_lots_user_open", table_name="credit_lots")
    op.drop_index("ix_credit_lots_expiring", table_name="credit_lots")
    op.create_index("ix_credit_lots_user_open", "credit_lots", ["user_id", "expires_at"],
                    postgresql_where=sa.text(condition))
    op.create_index("ix_credit_lots_expiring", "credit_lots", ["expires_at"], postgresql_where=sa.text(condition))
    if condition != "has_credits":
        op.drop_column("credit_lots", "has_credits")


# 0002 named its CHECK with the naming convention applied twice; it takes the models' name here.
DOUBLED_HOLD_CHECK = "ck_user_transactions_ck_user_transactions_hold_only_on_usage"
HOLD_CHECK = "ck_user_transactions_hold_only_on_usage"


def _hold_check_named(old: str, new: str):
    op.execute(f"ALTER TABLE user_transactions RENAME CONSTRAINT {old} TO {new}")


def _replace_check(name: str, condition: str):
    op.drop_constraint(op.f(f"ck_user_transactions_{name}"), "user_transactions", type_="check")
    op.create_check_constraint(op.f(f"ck_user_transactions_{name}"), "user_transactions", condition)


def _scopes(scopes: str):
    op.drop_constraint(op.f("ck_api_keys_scopes_known"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_scopes_known"), "api_keys",
                               f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{scopes}]::text[]")


def downgrade():
    bind = op.get_bind()
    newer = bind.execute(
        sa.text("SELECT count(*) FROM user_transactions WHERE type IN ('refund', 'reversal', 'adjustment')")
    ).scalar()
    keys = bind.execute(sa.text("SELECT count(*) FROM api_keys WHERE 'credits:adjust' = ANY(scopes)")).scalar()
    if newer or keys:
        raise RuntimeError(
            f"{newer} refunds, reversals or adjustments and {keys} keys with credits:adjust exist:"
            " the previous schema has no place for them"
        )
    op.create_index("ix_lot_postings_user", "lot_postings", ["user_id", "id"])
    _lot_indexes("remaining > 0")
    _hold_check_named(HOLD_CHECK, DOUBLED_HOLD_CHECK)
    _scopes(OLD_SCOPES)
    for name in NEW_CHECKS:
        op.drop_constraint(op.f(f"ck_user_transactions_{name}"), "user_transactions", type_="check")
    _replace_check("lot_terms_only_on_credits", OLD_LOT_TERMS)
    _replace_check("credits_sign_matches_type", OLD_SIGNS)
    for column in ("reverses", "refunds"):
        op.drop_constraint(op.f(f"fk_user_transactions_{column}_user_transactions"), "user_transactions",
                           type_="foreignkey")
    for column in ("reversed_credits", "refunded_amount", "reverses", "refunds"):
        op.drop_column("user_transactions", column)
    # The three enum values stay: PostgreSQL cannot drop one, no row may use them under the checks
    # above, and 0005's downgrade makes the type again without them.
