"""HTTP views of the ledger: parse with a schema, call one rule, render its value."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from ..auth import authenticated, current_caller
from ..http import idempotency_key, load_body, load_query, path_uuid
from ..ledger import policy, rules
from .schemas import (
    BalanceSchema,
    HistoryQuerySchema,
    LotQuerySchema,
    NewTransactionSchema,
    SettleSchema,
    UserQuerySchema,
    history_page_json,
    lots_page_json,
    transaction_json,
)

bp = Blueprint("transactions", __name__, url_prefix="/api")

_new_transaction = NewTransactionSchema()
_settle = SettleSchema()
_history_query = HistoryQuerySchema()
_user_query = UserQuerySchema()
_balance = BalanceSchema()
_lot_query = LotQuerySchema()


def _json(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/json")


@bp.get("/transactions")
@authenticated
def list_transactions() -> Response:
    query = load_query(_history_query)
    user_id = policy.readable_user(current_caller(), query.pop("user_id"))
    return _json(history_page_json(rules.list_history(user_id, **query)))


@bp.post("/transactions")
@authenticated
def create_transaction() -> Response:
    policy.require_writer(current_caller())
    recorded = rules.record_transaction(current_caller(), load_body(_new_transaction), idempotency_key())
    response = _json(transaction_json(recorded.transaction), 201)
    response.headers["Location"] = url_for(".get_transaction", transaction_id=recorded.transaction.id)
    if recorded.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/transactions/<uuid:transaction_id>")
@authenticated
def get_transaction(transaction_id: str) -> Response:
    transaction = rules.get_transaction(current_caller(), path_uuid("transaction_id", transaction_id, missing=True))
    return _json(transaction_json(transaction, rules.postings_of(transaction)))


@bp.patch("/transactions/<uuid:transaction_id>")
@authenticated
def settle_transaction(transaction_id: str) -> Response:
    policy.require_writer(current_caller())
    settled_id, status = path_uuid("transaction_id", transaction_id, missing=True), load_body(_settle)["status"]
    return _json(transaction_json(rules.settle_transaction(current_caller(), settled_id, status)))


@bp.get("/balance")
@authenticated
def get_balance() -> Response:
    user_id = policy.readable_user(current_caller(), load_query(_user_query)["user_id"])
    return jsonify(_balance.dump(rules.get_balance(user_id)))


@bp.get("/lots")
@authenticated
def list_lots() -> Response:
    query = load_query(_lot_query)
    user_id = policy.readable_user(current_caller(), query.pop("user_id"))
    return jsonify(lots_page_json(rules.list_lots(user_id, **query)))
