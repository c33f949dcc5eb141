"""Webhook endpoints as services manage them: register, list, change, rotate the secret, delete, and
see and retry each delivery. Every operation needs ``webhooks:manage``."""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import current_app

from ..auth import Caller
from ..errors import ApiError, validation_error
from ..ledger import policy
from ..ledger.rules import decode_cursor, encode_cursor
from ..scopes import MANAGE_WEBHOOKS
from . import destinations, store

# How long the secret a rotation replaced keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)


@dataclass(frozen=True)
class DeliveriesPage:
    deliveries: list[store.Delivery]
    attempts: dict[str, list[store.Attempt]]
    has_more: bool
    next_cursor: str | None


def require_manager(caller: Caller) -> None:
    """Every operation on webhook endpoints: a service whose key has ``webhooks:manage`` (checked before a body is read)."""
    policy.require_service_scope(caller, MANAGE_WEBHOOKS, "Webhook endpoints are managed by services, not user tokens.")


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_destination(url: str) -> None:
    config = current_app.config
    try:
        destinations.check(url, allow_http=config["WEBHOOK_ALLOW_HTTP"],
                           allow_private=config["WEBHOOK_ALLOW_PRIVATE_NETWORKS"])
    except destinations.DestinationRefused as refused:
        raise validation_error({"url": [str(refused)]}, f"Webhooks cannot be sent to this URL: {refused}") from refused


def _not_found(endpoint_id: uuid.UUID) -> ApiError:
    return ApiError(404, "not_found", f"No webhook endpoint {endpoint_id}.", title="Not Found")


def create(caller: Caller, request: dict[str, Any]) -> tuple[store.Endpoint, str]:
    """Register an endpoint; returns it with its signing secret, which is shown only now."""
    require_manager(caller)
    _check_destination(request["url"])
    secret = new_secret()
    endpoint = store.create_endpoint(request["url"], request["event_types"], request["description"], secret)
    return endpoint, secret


def list_all(caller: Caller) -> list[store.Endpoint]:
    require_manager(caller)
    return store.list_endpoints()


def get(caller: Caller, endpoint_id: uuid.UUID) -> store.Endpoint:
    require_manager(caller)
    endpoint = store.get_endpoint(endpoint_id)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint


def update(caller: Caller, endpoint_id: uuid.UUID, changes: dict[str, Any]) -> store.Endpoint:
    require_manager(caller)
    if "url" in changes:
        _check_destination(changes["url"])
    endpoint = store.update_endpoint(endpoint_id, changes)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint


def delete(caller: Caller, endpoint_id: uuid.UUID) -> None:
    require_manager(caller)
    if not store.delete_endpoint(endpoint_id):
        raise _not_found(endpoint_id)


def rotate(caller: Caller, endpoint_id: uuid.UUID) -> tuple[store.Endpoint, str]:
    """A new secret; the one it replaces signs beside it for ``ROTATION_OVERLAP``, so receivers can switch."""
    require_manager(caller)
    secret = new_secret()
    endpoint = store.rotate_secret(endpoint_id, secret, datetime.now(timezone.utc) + ROTATION_OVERLAP)
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint, secret


def deliveries(caller: Caller, endpoint_id: uuid.UUID, *, limit: int, cursor: str | None = None) -> DeliveriesPage:
    """An endpoint's deliveries, newest first, each with its attempts."""
    get(caller, endpoint_id)
    found = store.deliveries_page(endpoint_id, limit + 1, None if cursor is None else decode_cursor(cursor))
    page = found[:limit]
    attempts: dict[str, list[store.Attempt]] = {delivery.id: [] for delivery in page}
    for attempt in store.attempts_of(list(attempts)):
        attempts[attempt.delivery_id].append(attempt)
    has_more = len(found) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if has_more else None
    return DeliveriesPage(page, attempts, has_more, next_cursor)


def retry(caller: Caller, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> store.Delivery:
    """Send a delivered or failed delivery again now, with the same webhook-id; one still pending is left as is."""
    get(caller, endpoint_id)
    delivery = store.retry_delivery(endpoint_id, delivery_id) or store.get_delivery(endpoint_id, delivery_id)
    if delivery is None:
        raise ApiError(404, "not_found", f"No delivery {delivery_id} of endpoint {endpoint_id}.", title="Not Found")
    return delivery


def prune_deliveries(older_than: datetime) -> int:
    """Delete finished deliveries made before ``older_than``, a batch at a time; returns how many."""
    pruned = 0
    while count := store.prune_deliveries(older_than, 10_000):
        pruned += count
    return pruned
