"""HTTP views of the webhook endpoints: parse with a schema, call one rule, render its value."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from ..auth import authenticated, current_caller
from ..http import load_body, load_query, path_uuid
from ..webhooks import endpoints
from .schemas import (
    DeliveriesQuerySchema,
    NewWebhookEndpointSchema,
    WebhookEndpointChangesSchema,
    deliveries_page_json,
    delivery_json,
    webhook_endpoint_json,
)

bp = Blueprint("webhooks", __name__, url_prefix="/api/webhook-endpoints")

_new = NewWebhookEndpointSchema()
_changes = WebhookEndpointChangesSchema()
_deliveries_query = DeliveriesQuerySchema()


@bp.post("")
@authenticated
def create_endpoint() -> tuple[Response, int, dict[str, str]]:
    endpoints.require_manager(current_caller())
    endpoint, secret = endpoints.create(current_caller(), load_body(_new))
    location = url_for(".get_endpoint", endpoint_id=endpoint.id)
    return jsonify(webhook_endpoint_json(endpoint, secret)), 201, {"Location": location}


@bp.get("")
@authenticated
def list_endpoints() -> Response:
    return jsonify({"data": [webhook_endpoint_json(endpoint) for endpoint in endpoints.list_all(current_caller())]})


@bp.get("/<uuid:endpoint_id>")
@authenticated
def get_endpoint(endpoint_id: str) -> Response:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    return jsonify(webhook_endpoint_json(endpoints.get(current_caller(), endpoint_id)))


@bp.patch("/<uuid:endpoint_id>")
@authenticated
def update_endpoint(endpoint_id: str) -> Response:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    endpoints.require_manager(current_caller())
    return jsonify(webhook_endpoint_json(endpoints.update(current_caller(), endpoint_id, load_body(_changes))))


@bp.delete("/<uuid:endpoint_id>")
@authenticated
def delete_endpoint(endpoint_id: str) -> tuple[str, int]:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    endpoints.delete(current_caller(), endpoint_id)
    return "", 204


@bp.post("/<uuid:endpoint_id>/rotate-secret")
@authenticated
def rotate_secret(endpoint_id: str) -> Response:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    endpoint, secret = endpoints.rotate(current_caller(), endpoint_id)
    return jsonify(webhook_endpoint_json(endpoint, secret))


@bp.get("/<uuid:endpoint_id>/deliveries")
@authenticated
def list_deliveries(endpoint_id: str) -> Response:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    page = endpoints.deliveries(current_caller(), endpoint_id, **load_query(_deliveries_query))
    return jsonify(deliveries_page_json(page))


@bp.post("/<uuid:endpoint_id>/deliveries/<uuid:delivery_id>/retry")
@authenticated
def retry_delivery(endpoint_id: str, delivery_id: str) -> Response:
    endpoint_id = path_uuid("endpoint_id", endpoint_id, missing=True)
    delivery_id = path_uuid("delivery_id", delivery_id, missing=True)
    return jsonify(delivery_json(endpoints.retry(current_caller(), endpoint_id, delivery_id)))
