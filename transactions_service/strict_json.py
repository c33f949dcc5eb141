"""JSON as RFC 8259 means it, for everything a client sends: bodies and token segments.

Python's ``json`` module quietly keeps the last of two members with the same
name (so ``{"credits": 1, "credits": 100000}`` could mean different things to
a proxy, a validator and us), accepts ``NaN`` and ``Infinity``, and reads
numbers with a fraction as binary floats (``9.999999999999999999`` becomes
``10.0``). Here a repeated name and a non-finite literal are refused, and
every number with a fraction or an exponent is read as an exact ``Decimal``,
so that a schema can refuse more precision than a field allows instead of
seeing a rounded value.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class NotStrictJson(ValueError):
    """The text is not JSON, or is JSON this service does not accept (a repeated member, NaN)."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise NotStrictJson(f"the member {name!r} appears more than once in one object")
        members[name] = value
    return members


def _refuse_constant(name: str) -> Any:
    raise NotStrictJson(f"{name} is not a JSON number")


def loads(text: str | bytes) -> Any:
    """Parse ``text``; raises :class:`NotStrictJson` for anything RFC 8259 or this service refuses."""
    try:
        return json.loads(
            text, parse_float=Decimal, parse_constant=_refuse_constant, object_pairs_hook=_unique_members
        )
    except NotStrictJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise NotStrictJson(str(exc)) from exc
