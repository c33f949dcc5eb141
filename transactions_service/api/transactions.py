"""HTTP views of the ledger: parse with a schema, call one rule, render its value."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, stream_with_context, url_for

from ..auth import authenticated, current_caller
from ..http import idempotency_key, load_body, load_query, path_uuid
from ..ids import utcnow
from ..ledger import batches, policy, reports, rules
from .schemas import (
    BalanceAtSchema,
    BatchSchema,
    BalanceQuerySchema,
    BalanceSchema,
    ExportQuerySchema,
    HistoryQuerySchema,
    LotQuerySchema,
    NewTransactionSchema,
    SettleSchema,
    StatementQuerySchema,
    StatementSchema,
    UsageQuerySchema,
    UsageSummarySchema,
    batch_items,
    batch_json,
    history_page_json,
    lots_page_json,
    transaction_json,
)

bp = Blueprint("transactions", __name__, url_prefix="/api")

_new_transaction = NewTransactionSchema()
_settle = SettleSchema()
_history_query = HistoryQuerySchema()
_balance_query = BalanceQuerySchema()
_balance = BalanceSchema()
_balance_at = BalanceAtSchema()
_statement_query = StatementQuerySchema()
_statement = StatementSchema()
_usage_query = UsageQuerySchema()
_usage = UsageSummarySchema()
_export_query = ExportQuerySchema()
_batch = BatchSchema()
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


@bp.post("/transactions/batch")
@authenticated
def create_transaction_batch() -> Response:
    policy.require_writer(current_caller())
    batch = load_body(_batch)
    items, atomic = batch_items(batch["items"]), batch["atomic"]
    record = batches.record_atomically if atomic else batches.record_batch
    return _json(batch_json(record(current_caller(), items)), 201 if atomic else 200)


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
    query = load_query(_balance_query)
    user_id = policy.readable_user(current_caller(), query["user_id"])
    if query["at"] is None:
        return jsonify(_balance.dump(rules.get_balance(user_id)))
    return jsonify(_balance_at.dump(reports.balance_at(user_id, query["at"])))


@bp.get("/statements")
@authenticated
def get_statement() -> Response:
    query = load_query(_statement_query)
    user_id = policy.readable_user(current_caller(), query["user_id"])
    return jsonify(_statement.dump(reports.statement(user_id, query["month"], query["zone"])))


@bp.get("/usage/summary")
@authenticated
def get_usage_summary() -> Response:
    query = load_query(_usage_query)
    user_id = policy.readable_user(current_caller(), query.pop("user_id"))
    return jsonify(_usage.dump(reports.usage_summary(user_id, **query)))


_EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}


@bp.get("/transactions/export")
@authenticated
def export_transactions() -> Response:
    query = load_query(_export_query)
    user_id, form = policy.readable_user(current_caller(), query.pop("user_id")), query.pop("form")
    lines = reports.export(user_id, form, **query)
    name = f"transactions-{user_id}-{utcnow():%Y-%m-%d}.{form}"
    return Response(stream_with_context(lines), content_type=_EXPORT_TYPES[form],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/lots")
@authenticated
def list_lots() -> Response:
    query = load_query(_lot_query)
    user_id = policy.readable_user(current_caller(), query.pop("user_id"))
    return jsonify(lots_page_json(rules.list_lots(user_id, **query)))
