"""API keys: the services' credentials, kept as hashes.

Services stop authenticating with JWTs that carry a ``scope`` claim; they
present keys made by ``flask --app wsgi keys create``. The table holds each
key's SHA-256, never the key, with its name, scopes and times.

Revision ID: 0004_api_keys
Revises: 0003_idempotency_user
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_api_keys"
down_revision = "0003_idempotency_user"
branch_labels = None
depends_on = None

# The scopes as this revision knows them; a later scope widens the CHECK in its own revision.
SCOPES = "'purchases:write', 'transactions:read', 'usage:write', 'users:write'"


def upgrade():
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id ~ '^[0-9A-Za-z]{12}$'", name=op.f("ck_api_keys_id_format")),
        sa.CheckConstraint("name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'", name=op.f("ck_api_keys_name_format")),
        sa.CheckConstraint("octet_length(secret_hash) = 32", name=op.f("ck_api_keys_secret_hash_length")),
        sa.CheckConstraint(
            f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{SCOPES}]::text[]", name=op.f("ck_api_keys_scopes_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])


def downgrade():
    op.drop_table("api_keys")
