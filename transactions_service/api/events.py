"""HTTP view of the event feed: what every write changed, in an order a reader never loses its place in."""

from __future__ import annotations

from flask import Blueprint, Response

from ..auth import authenticated, current_caller
from ..http import load_query
from ..ledger import rules
from .schemas import EventQuerySchema, events_page_json

bp = Blueprint("events", __name__, url_prefix="/api")

_event_query = EventQuerySchema()


@bp.get("/events")
@authenticated
def list_events() -> Response:
    query = load_query(_event_query, repeated=("type",))
    return Response(events_page_json(rules.list_events(current_caller(), **query)), mimetype="application/json")
