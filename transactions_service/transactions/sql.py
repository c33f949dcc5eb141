"""The ledger's hot statements, written once as SQL.

Spending credits and reading history are what the product does all day, so
each is one statement, sent once, with nothing built per request:

- Recording a transaction is one statement: the balance effect (the guarded
  spend, the hold or the credit), the ledger row and the idempotency record
  are data-modifying parts of one ``WITH`` query, so they commit together or
  not at all without a ``BEGIN``/``COMMIT`` round trip each.
- A history page is one ``SELECT`` on the ``(user_id, created_at, id)`` index.
- Rows are read as :data:`TRANSACTION_COLUMNS`, text that
  ``schemas.transaction_json`` puts straight into the response: PostgreSQL
  casts to text for far less than the driver's typed values (UUID, Decimal,
  datetime) cost Python to build and format again (BENCHMARKS.md).

Parameters are bound by the driver (``%(name)s``), never formatted into the text.
"""

from __future__ import annotations

import functools

# Times as UTC wall-clock text ("2026-11-26 10:17:45.12"), whatever the session's TimeZone.
TRANSACTION_COLUMN_LIST = (
    "id::text",
    "user_id::text",
    "type::text",
    "amount::text",
    "credits",
    "description",
    "status::text",
    "(created_at AT TIME ZONE 'UTC')::text",
    "(updated_at AT TIME ZONE 'UTC')::text",
    "(hold_expires_at AT TIME ZONE 'UTC')::text",
)
"""A ``user_transactions`` row as ``schemas.transaction_json`` reads it; unqualified, so that
it serves in a SELECT from the table and in the RETURNING clause of an INSERT or UPDATE."""
TRANSACTION_COLUMNS = ", ".join(TRANSACTION_COLUMN_LIST)
# Where a row's keyset position is (schemas.encode_cursor).
ID_COLUMN = TRANSACTION_COLUMN_LIST.index("id::text")
CREATED_AT_COLUMN = TRANSACTION_COLUMN_LIST.index("(created_at AT TIME ZONE 'UTC')::text")


@functools.cache
def history_page(*, by_type: bool, by_status: bool, after: bool) -> str:
    """A page of one user's history, newest first (``TRANSACTION_COLUMNS``)."""
    conditions = ["user_id = %(user_id)s"]
    if by_type:
        conditions.append("type = %(type)s")
    if by_status:
        conditions.append("status = %(status)s")
    if after:
        conditions.append("(created_at, id) < (%(after_created_at)s, %(after_id)s)")
    return (
        f"SELECT {TRANSACTION_COLUMNS} FROM user_transactions"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )


# The balance effect of a new ledger row, as a CTE returning one row when it applied.
EFFECTS = {
    # Completed usage: spend, only if that many credits are available.
    "spend": (
        "UPDATE user_balances SET balance = balance - %(needed)s, updated_at = now()"
        " WHERE user_id = %(user_id)s AND balance - held >= %(needed)s RETURNING user_id"
    ),
    # Pending usage: hold, on the same condition.
    "hold": (
        "UPDATE user_balances SET held = held + %(needed)s, updated_at = now()"
        " WHERE user_id = %(user_id)s AND balance - held >= %(needed)s RETURNING user_id"
    ),
    # Completed purchase: credit, creating the balance row on first use.
    "credit": (
        "INSERT INTO user_balances AS b (user_id, balance, held) VALUES (%(user_id)s, %(credits)s, 0)"
        " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now()"
        " RETURNING user_id"
    ),
}

_NEW_ROW = (
    "%(id)s::uuid, %(user_id)s::uuid, %(type)s::transaction_type, %(amount)s::numeric, %(credits)s::integer,"
    " %(description)s::text, %(status)s::transaction_status, %(created_at)s::timestamptz,"
    " %(created_at)s::timestamptz, %(hold_expires_at)s::timestamptz"
)
_LEDGER_COLUMNS = "id, user_id, type, amount, credits, description, status, created_at, updated_at, hold_expires_at"


@functools.cache
def record(effect: str | None, *, keyed: bool) -> str:
    """Record one ledger row with its balance effect (and idempotency record); returns its id.

    With an effect, the row is inserted only if the effect applied, so the
    statement returns no row when the credits were not available (or the user
    has no balance row). The idempotency record (holding ``%(body)s``, the
    response) is inserted from the ledger row's own RETURNING, so it exists
    exactly when the row does. A key used before fails the statement on the
    record's primary key, writing nothing, when the effect applied; when it
    did not, the statement records nothing and the caller looks the key up.
    """
    parts = []
    if effect is None:
        source = f"VALUES ({_NEW_ROW})"
    else:
        parts.append(f"effect AS ({EFFECTS[effect]})")
        source = f"SELECT {_NEW_ROW} FROM effect"
    parts.append(f"new AS (INSERT INTO user_transactions ({_LEDGER_COLUMNS}) {source} RETURNING id)")
    if keyed:
        parts.append(
            "claim AS (INSERT INTO idempotency_keys"
            " (caller, key, request_hash, status_code, response_body, transaction_id, user_id)"
            " SELECT %(caller)s, %(key)s, %(request_hash)s, 201, %(body)s, id, %(user_id)s::uuid FROM new)"
        )
    return f"WITH {', '.join(parts)} SELECT id FROM new"
