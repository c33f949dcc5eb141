"""Ledger events: the outbox each write adds to in its own statement; low-balance thresholds; events:read.

Events start with this release: the rows written before it have none (the
feed is what happened from now on; the history and the balance tell the
rest). Writes of the previous release may go on while this runs: the new
columns of user_balances are nullable or have a constant default (no
rewrite), the CHECK is on a column that is all NULL, the index of reversals
is built CONCURRENTLY, and ledger_events is new.

Also: event_relays, where a relay of the feed (into JetStream) has got to;
and the index of each usage's reversals, which the next reversal's plan
reads (what each lot has had back already).

Revision ID: 0007_ledger_events
Revises: 0006_refunds_reversals
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.types import UserDefinedType

revision = "0007_ledger_events"
down_revision = "0006_refunds_reversals"
branch_labels = None
depends_on = None

OLD_SCOPES = "'credits:adjust', 'credits:grant', 'purchases:write', 'transactions:read', 'usage:write', 'users:write'"
NEW_SCOPES = (
    "'credits:adjust', 'credits:grant', 'events:read', 'purchases:write', 'transactions:read', 'usage:write',"
    " 'users:write'"
)
EVENT_TYPES = "'transaction.created', 'transaction.updated', 'lot.expired', 'balance.low'"


class Xid8(UserDefinedType):
    cache_ok = True

    def get_col_spec(self, **kw):
        return "xid8"


def upgrade():
    op.add_column("user_balances", sa.Column("event_sequence", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("user_balances", sa.Column("low_balance_own", sa.Boolean(), server_default="false", nullable=False))
    op.add_column("user_balances", sa.Column("low_balance_threshold", sa.BigInteger(), nullable=True))
    op.create_check_constraint(op.f("ck_user_balances_low_balance_threshold_not_negative"), "user_balances",
                               "low_balance_threshold >= 0")
    op.create_table(
        "ledger_events",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("xid", Xid8(), server_default=sa.text("pg_current_xact_id()"), nullable=False),
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"type IN ({EVENT_TYPES})", name=op.f("ck_ledger_events_type_known")),
        sa.CheckConstraint("sequence > 0", name=op.f("ck_ledger_events_sequence_positive")),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_ledger_events")),
    )
    op.create_index("ix_ledger_events_feed", "ledger_events", ["xid", "position"])
    op.create_index("ix_ledger_events_created_at", "ledger_events", ["created_at"], postgresql_using="brin")
    op.create_table(
        "event_relays",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("after_xid", sa.BigInteger(), nullable=False),
        sa.Column("after_position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_relays")),
    )
    _scopes(NEW_SCOPES)
    with op.get_context().autocommit_block():  # a usage's reversals, for the next one's plan
        op.create_index("ix_user_transactions_reverses", "user_transactions", ["reverses"],
                        postgresql_where=sa.text("reverses IS NOT NULL"), postgresql_concurrently=True,
                        if_not_exists=True)


def _scopes(scopes: str):
    op.drop_constraint(op.f("ck_api_keys_scopes_known"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_scopes_known"), "api_keys",
                               f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{scopes}]::text[]")


def downgrade():
    keys = op.get_bind().execute(sa.text("SELECT count(*) FROM api_keys WHERE 'events:read' = ANY(scopes)")).scalar()
    if keys:
        raise RuntimeError(f"{keys} keys with events:read exist: the previous schema has no place for them")
    with op.get_context().autocommit_block():
        op.drop_index("ix_user_transactions_reverses", "user_transactions", postgresql_concurrently=True,
                      if_exists=True)
    _scopes(OLD_SCOPES)
    op.drop_table("event_relays")
    op.drop_table("ledger_events")
    for column in ("low_balance_threshold", "low_balance_own", "event_sequence"):
        op.drop_column("user_balances", column)
