"""HTTP views of the ledger: thin wrappers over :mod:`.service`."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, url_for

from ..auth import authenticated, current_caller
from ..scopes import WRITE_PURCHASES, WRITE_USAGE
from ..http import idempotency_key, load_body, load_query
from . import service
from .schemas import BalanceSchema, HistoryQuerySchema, NewTransactionSchema, SettleSchema, UserQuerySchema

bp = Blueprint("transactions", __name__, url_prefix="/api")

_new_transaction = NewTransactionSchema()
_settle = SettleSchema()
_history_query = HistoryQuerySchema()
_user_query = UserQuerySchema()
_balance = BalanceSchema()


def _json(body: str, status: int = 200) -> Response:
    """A response whose JSON was rendered already (``schemas.transaction_json``)."""
    return Response(body, status=status, mimetype="application/json")


@bp.get("/transactions")
@authenticated
def list_transactions() -> Response:
    query = load_query(_history_query)
    user_id = current_caller().readable_user(query["user_id"])
    page = service.list_history(
        user_id, limit=query["limit"], cursor=query["cursor"], kind=query["type"], status=query["status"]
    )
    return _json(page.to_json())


@bp.post("/transactions")
@authenticated
def create_transaction() -> Response:
    caller = current_caller()
    caller.require_any_scope([WRITE_PURCHASES, WRITE_USAGE])
    recorded = service.record_transaction(caller, load_body(_new_transaction), idempotency_key())
    response = _json(recorded.body, recorded.status_code)
    response.headers["Location"] = url_for(".get_transaction", transaction_id=recorded.transaction_id)
    if recorded.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/transactions/<uuid:transaction_id>")
@authenticated
def get_transaction(transaction_id: uuid.UUID) -> Response:
    return _json(service.get_transaction(current_caller(), transaction_id))


@bp.patch("/transactions/<uuid:transaction_id>")
@authenticated
def settle_transaction(transaction_id: uuid.UUID) -> Response:
    caller = current_caller()
    caller.require_any_scope([WRITE_PURCHASES, WRITE_USAGE])
    status = load_body(_settle)["status"]
    return _json(service.settle_transaction(caller, transaction_id, status))


@bp.get("/balance")
@authenticated
def get_balance() -> Response:
    user_id = current_caller().readable_user(load_query(_user_query)["user_id"])
    return jsonify(_balance.dump(service.get_balance(user_id)))


