"""The service scopes: what an API key may let a service do, each named once.

Scopes belong to API keys only (``api_keys``). A user's token never carries
one that counts: whatever its ``scope`` claim says, a user reads only their
own data and writes nothing.
"""

from __future__ import annotations

READ_TRANSACTIONS = "transactions:read"
WRITE_PURCHASES = "purchases:write"
WRITE_USAGE = "usage:write"
WRITE_USERS = "users:write"
GRANT_CREDITS = "credits:grant"
ADJUST_CREDITS = "credits:adjust"
READ_EVENTS = "events:read"
MANAGE_WEBHOOKS = "webhooks:manage"
SERVICE_SCOPES = frozenset(
    {READ_TRANSACTIONS, WRITE_PURCHASES, WRITE_USAGE, WRITE_USERS, GRANT_CREDITS, ADJUST_CREDITS, READ_EVENTS,
     MANAGE_WEBHOOKS}
)


def parse_scopes(text: str) -> list[str]:
    """A space-separated scope list, split on ASCII spaces only (``"a\\u2003b"`` is one unknown scope)."""
    return [scope for scope in text.split(" ") if scope]
