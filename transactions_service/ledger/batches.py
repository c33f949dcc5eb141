"""Batches: up to 100 writes in one call, each applied as a single write is, in item order.

An item is a whole ``POST /api/transactions`` request with its own idempotency
key, in the same space of keys as the header's: an item replays what the same
request answered first, in a batch or alone, so a batch retried whole after a
timeout applies each item once. Items are applied one after another, so two
spends of one user see each other, and each answers what a single write of it
would have: a refusal (no credits, no scope, nothing left to refund) is that
item's alone. A batch with an item that is not a valid write at all is refused
whole before anything is written (``api/schemas.batch_items``).

An atomic batch applies all its items or none, in one transaction
(``record_atomically``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..auth import Caller
from ..errors import ApiError
from ..extensions import one_transaction
from ..http import MAX_BATCH_ITEMS
from ..ids import utcnow
from . import rules, store
from .store import Transaction

__all__ = ["MAX_BATCH_ITEMS", "Item", "ItemResult", "record_atomically", "record_batch"]


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


def _at_once(caller: Caller, items: list[Item]) -> list[int]:
    """The items that may go in one statement (``rules.record_debits``): for each user, their usage items
    (spends and holds) up to the first of theirs that is anything else, or has a key an item before it had."""
    chosen, stopped, keys = [], set(), set()
    for index, (request, key) in enumerate(items):
        user_id = request["user_id"]
        if user_id not in stopped:
            if key not in keys and rules.debits_at_once(caller, request):
                chosen.append(index)
            else:
                stopped.add(user_id)
        keys.add(key)
    return chosen


def record_batch(caller: Caller, items: list[Item]) -> list[ItemResult]:
    """Apply each item on its own, in order; one refused changes nothing for the others.

    A batch's usage (spends and holds) goes first, in one statement for all its users
    (``_at_once``); what it did not apply, and every other item, is then applied
    one by one in item order. Each user's items still apply in their order: the
    statement applies a prefix of each user's items, and the rest follow it.
    """
    chosen = _at_once(caller, items)
    spent = rules.record_debits(caller, [items[index] for index in chosen], utcnow()) if chosen else {}
    applied = {chosen[place]: transaction for place, transaction in spent.items()}
    return [
        ItemResult(201, applied[index]) if index in applied else _apply(caller, item)
        for index, item in enumerate(items)
    ]


def _whole_batch_refused(index: int, refused: ApiError) -> ApiError:
    return ApiError(
        refused.status, refused.code, f"Item {index}: {refused.detail} Nothing in the batch was written.",
        title=refused.title, errors=refused.errors, headers=refused.headers,
        extensions={**refused.extensions, "index": index},
    )


class _NotEvery(Exception):
    """Not every item of an atomic batch applied in one statement: its transaction is rolled back."""


def _spent_atomically(caller: Caller, items: list[Item]) -> list[ItemResult] | None:
    """An atomic batch of usage alone, in one statement: every item applied, or None and nothing."""
    if len(_at_once(caller, items)) < len(items):
        return None
    try:
        with one_transaction():
            spent = rules.record_debits(caller, items, utcnow(), whole=True)
            if len(spent) < len(items):
                raise _NotEvery
    except _NotEvery:
        return None
    return [ItemResult(201, spent[index]) for index in range(len(items))]


def record_atomically(caller: Caller, items: list[Item]) -> list[ItemResult]:
    """Apply every item, in order, in one transaction, or none: the first refused item's problem (with its
    ``index``) is the answer, and everything before it is rolled back. An item replayed from its key
    counts as applied. The users' balance rows are taken first, in one order, for the whole transaction.

    A batch of usage alone is tried in one statement first; when not
    all of it applies (a refusal, or a replay), the items go one by one.
    """
    spent = _spent_atomically(caller, items)
    if spent is not None:
        return spent
    with one_transaction():
        store.lock_balances(list({str(request["user_id"]) for request, _key in items}))
        results = []
        for index, item in enumerate(items):
            result = _apply(caller, item)
            if result.problem is not None:
                raise _whole_batch_refused(index, result.problem)
            results.append(result)
    return results
