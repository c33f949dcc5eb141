"""The books at any instant, and the usage rollup that summaries read.

**Postings in time order.** A user's lot postings are now stamped in the order
they are written: each write stamps its postings with its own time, or the
time of the user's previous posting if that is later (two writes of one user
race for the balance row, and the one that waited may carry an earlier
clock). ``user_balances.posted_at`` keeps that previous time, on the row every
write locks first. So the user's postings up to an instant are exactly those
before a point of ``ix_lot_postings_user_time``, and the last one's
``balance_after`` and ``held_after`` are the books at that instant: one index
seek. The index is built CONCURRENTLY, so writes go on while it is.

**The usage rollup.** ``usage_rollup`` holds the credits spent per user and
period (completed usage less what reversals gave back), in total (key and
value ``''``) and per value of each metadata key the service groups by
(``USAGE_GROUP_KEYS``, ``model`` by default), in four grains: quarter hours,
hours, quarter days and UTC days. Each write that spends or gives back adds to
each in its own statement; a summary reads the coarsest periods a bucket holds
whole and finer ones towards its edges (every time zone's midnight falls on a
quarter hour), so its cost grows with the range asked for, not with the
history. It is
filled here from the ledger as it stands.

Revision ID: 0011_books_and_rollup
Revises: 0010_metadata_reference
Create Date: 2026-12-01
"""

import os

import sqlalchemy as sa
from alembic import op

revision = "0011_books_and_rollup"
down_revision = "0010_metadata_reference"
branch_labels = None
depends_on = None

# What the ledger has spent so far, per user and period of each grain: in total, and per value of each
# grouped key. A reversal counts when it was made, against the values of the usage it reverses.
_FILL_ROLLUP = """
INSERT INTO usage_rollup (user_id, key, grain, period, value, credits)
SELECT user_id, key, g.minutes, date_bin(g.width, made_at, timestamptz '2000-01-01 00:00:00+00') AS period, value,
       sum(spent)
FROM (
    SELECT t.user_id, '' AS key, t.created_at AS made_at, '' AS value, -t.credits AS spent
    FROM user_transactions AS t
    WHERE (t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal'
    UNION ALL
    SELECT t.user_id, m.key, t.created_at, m.value, -t.credits
    FROM user_transactions AS t
    JOIN transaction_metadata AS m ON m.transaction_id = coalesce(t.reverses, t.id)
    WHERE ((t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal')
      AND m.key = ANY(:keys)
) AS spent,
(VALUES (15, interval '15 minutes'), (60, interval '1 hour'), (360, interval '6 hours'), (1440, interval '1 day')) AS g (minutes, width)
GROUP BY user_id, key, g.minutes, period, value
"""


def _group_keys() -> list[str]:
    return [key.strip() for key in os.environ.get("USAGE_GROUP_KEYS", "model").split(",") if key.strip()]


def upgrade():
    op.add_column("user_balances", sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE user_balances AS b SET posted_at = p.last FROM"
        " (SELECT user_id, max(created_at) AS last FROM lot_postings GROUP BY user_id) AS p"
        " WHERE p.user_id = b.user_id"
    )
    op.create_table(
        "usage_rollup",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("period", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", "grain", "period", "value", name=op.f("pk_usage_rollup")),
    )
    op.get_bind().execute(sa.text(_FILL_ROLLUP), {"keys": _group_keys()})
    with op.get_context().autocommit_block():
        op.create_index("ix_lot_postings_user_time", "lot_postings", ["user_id", "created_at", "id"],
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_lot_postings_user_time", "lot_postings", postgresql_concurrently=True, if_exists=True)
    op.drop_table("usage_rollup")
    op.drop_column("user_balances", "posted_at")
