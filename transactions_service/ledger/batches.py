"""Batches: up to 100 writes in one call, each applied as a single write is, in item order.

An item is a whole ``POST /api/transactions`` request with its own idempotency
key, in the same space of keys as the header's: an item replays what the same
request answered first, in a batch or alone, so a batch retried whole after a
timeout applies each item once. Items are applied one after another, so two
spends of one user see each other, and each answers what a single write of it
would have: a refusal (no credits, no scope, nothing left to refund) is that
item's alone. A batch with an item that is not a valid write at all is refused
whole before anything is written (``api/schemas.batch_items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..auth import Caller
from ..errors import ApiError
from ..http import MAX_BATCH_ITEMS
from . import rules
from .store import Transaction

__all__ = ["MAX_BATCH_ITEMS", "Item", "ItemResult", "record_batch"]


@dataclass(frozen=True)
class ItemResult:
    """What one item answered: its status, and the transaction or the problem."""

    status: int
    transaction: Transaction | None = None
    problem: ApiError | None = None
    replayed: bool = False


# An item: the request as a single write's schema loads it, and its key.
Item = tuple[dict[str, Any], str]


def _apply(caller: Caller, item: Item) -> ItemResult:
    request, key = item
    try:
        recorded = rules.record_transaction(caller, request, key)
    except ApiError as refused:
        return ItemResult(refused.status, problem=refused)
    return ItemResult(200 if recorded.replayed else 201, recorded.transaction, replayed=recorded.replayed)


def record_batch(caller: Caller, items: list[Item]) -> list[ItemResult]:
    """Apply each item on its own, in order; one refused changes nothing for the others."""
    return [_apply(caller, item) for item in items]
