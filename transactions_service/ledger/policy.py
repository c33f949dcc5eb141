"""Who may do what with the ledger, decided before any write.

A user (a JWT) reads only their own data and writes nothing. A service (an
API key) may do what its key's scopes grant: read any user's data with
``transactions:read``, write a transaction with the scope of its *type*
(``purchases:write`` for purchases and their refunds, ``usage:write`` for
usage and its reversals, ``credits:grant`` for grants, ``credits:adjust`` for
support's adjustments), register users with ``users:write``, read the event
feed with ``events:read``. Views, rules and the command line all ask here.
"""

from __future__ import annotations

import uuid

from ..auth import Caller
from ..errors import ApiError, validation_error
from ..scopes import (
    ADJUST_CREDITS,
    GRANT_CREDITS,
    READ_EVENTS,
    READ_TRANSACTIONS,
    WRITE_PURCHASES,
    WRITE_USAGE,
    WRITE_USERS,
)
from .models import TransactionType

WRITE_SCOPE = {
    TransactionType.PURCHASE: WRITE_PURCHASES,
    TransactionType.USAGE: WRITE_USAGE,
    TransactionType.GRANT: GRANT_CREDITS,
    TransactionType.REFUND: WRITE_PURCHASES,
    TransactionType.REVERSAL: WRITE_USAGE,
    TransactionType.ADJUSTMENT: ADJUST_CREDITS,
}
_INSUFFICIENT_SCOPE = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}


def _insufficient_scope(detail: str) -> ApiError:
    return ApiError(403, "insufficient_scope", detail, title="Forbidden", headers=_INSUFFICIENT_SCOPE)


def _require(caller: Caller, scope: str) -> None:
    if scope not in caller.scopes:
        raise _insufficient_scope(f"This operation needs the {scope!r} scope, which the caller's API key does not grant.")


def require_writer(caller: Caller) -> None:
    """Writing any transaction needs one of the write scopes (checked before the body is read)."""
    scopes = list(dict.fromkeys(WRITE_SCOPE.values()))
    if not caller.scopes.intersection(scopes):
        raise _insufficient_scope(f"This operation needs one of the scopes {', '.join(scopes)}.")


def may_write(caller: Caller, kind: TransactionType | str) -> bool:
    """Whether the caller may write (create or settle) a transaction of this type."""
    return WRITE_SCOPE[TransactionType(kind)] in caller.scopes


def require_write(caller: Caller, kind: TransactionType | str) -> None:
    """Writing (creating or settling) a transaction of this type."""
    _require(caller, WRITE_SCOPE[TransactionType(kind)])


def writable_types(caller: Caller) -> list[str]:
    """The transaction types this caller may settle, for the settling statement's condition."""
    return [kind.value for kind in WRITE_SCOPE if may_write(caller, kind)]


def require_register(caller: Caller) -> None:
    _require(caller, WRITE_USERS)


def require_read(caller: Caller) -> None:
    """Reading a transaction by id: users read theirs (see :func:`can_read`), services need the read scope."""
    if caller.is_service:
        _require(caller, READ_TRANSACTIONS)


def require_service_scope(caller: Caller, scope: str, refusal: str) -> None:
    """What only a service may do, and only with ``scope``: a user token is refused with ``refusal`` (403)."""
    if not caller.is_service:
        raise ApiError(403, "forbidden", refusal, title="Forbidden")
    _require(caller, scope)


def require_events(caller: Caller) -> None:
    """Reading the event feed: every user's events, so services only, with ``events:read``."""
    require_service_scope(caller, READ_EVENTS, "The event feed is for services; a user token cannot read it.")


def can_read(caller: Caller, owner: uuid.UUID | str) -> bool:
    """Whether this caller may see a row of ``owner``'s (services: after :func:`require_read`)."""
    return caller.is_service or str(caller.user_id) == str(owner)


def reads_any_user(caller: Caller) -> bool:
    """Whether the caller may see any user's balance (so a refusal may tell it how many credits are left)."""
    return caller.is_service and READ_TRANSACTIONS in caller.scopes


def readable_user(caller: Caller, requested: uuid.UUID | None) -> uuid.UUID:
    """The user whose data this caller may read, given the ``user_id`` it asked for."""
    if caller.user_id is not None:
        if requested is not None and requested != caller.user_id:
            raise ApiError(403, "forbidden", "A user token reads only its own user's data.", title="Forbidden")
        return caller.user_id
    _require(caller, READ_TRANSACTIONS)
    if requested is None:
        raise validation_error(
            {"user_id": ["Missing data for required field."]}, "Service callers must name the user they read."
        )
    return requested
