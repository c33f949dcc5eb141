"""A small client for the ledger API, so tests read as the callers' flows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from transactions_service.auth import Caller
from transactions_service.ledger import rules
from transactions_service.ledger.models import TransactionStatus, TransactionType, UserTransaction
from transactions_service.scopes import SERVICE_SCOPES

# The caller of writes made at a chosen instant (write_at), with every service scope.
SEEDER = Caller(name="report-seed", scopes=SERVICE_SCOPES)


def write_at(app: Flask, user_id: uuid.UUID, at: datetime, kind: str, credits: int, **fields: Any) -> Any:
    """A write made at ``at``, through the rule the API calls (the demo data's way of making a past)."""
    request = {"type": TransactionType(kind), "status": TransactionStatus(fields.pop("status", "completed")),
               "user_id": user_id, "amount": Decimal(fields.pop("amount", "0")), "credits": credits,
               "description": fields.pop("description", kind), **fields}
    with app.test_request_context():
        return rules.record_transaction(SEEDER, request, str(uuid.uuid4()), now=at).transaction


def lapse(db_session: Any, transaction_id: uuid.UUID | str, ago: timedelta = timedelta(seconds=1)) -> None:
    """Move a hold's expiry into the past, as if its time had run out."""
    db_session.execute(
        update(UserTransaction)
        .where(UserTransaction.id == uuid.UUID(str(transaction_id)))
        .values(hold_expires_at=datetime.now().astimezone() - ago)
    )
    db_session.commit()


def totals(balance: dict[str, Any]) -> dict[str, Any]:
    """A balance answer's totals (user, balance, held, available), without its split by lot."""
    return {name: balance[name] for name in ("user_id", "balance", "held", "available")}


def without_postings(transaction: dict[str, Any]) -> dict[str, Any]:
    """A transaction as read by id, without the postings only that read adds."""
    return {name: value for name, value in transaction.items() if name != "postings"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    def __init__(self, client: FlaskClient, admin_token: str, user_token: Callable[..., str]) -> None:
        self.client = client
        self.admin_token = admin_token
        self.user_token = user_token

    def register(self, user_id: uuid.UUID | None = None) -> uuid.UUID:
        user_id = user_id or uuid.uuid4()
        response = self.client.put(f"/api/users/{user_id}", headers=bearer(self.admin_token))
        assert response.status_code in (200, 201), response.json
        return user_id

    def create(self, token: str | None = None, key: str | None = None, **fields: Any) -> Any:
        headers = bearer(token or self.admin_token)
        if key is not None:
            headers["Idempotency-Key"] = key
        body = {name: str(value) if isinstance(value, uuid.UUID) else value for name, value in fields.items()}
        return self.client.post("/api/transactions", json=body, headers=headers)

    def purchase(self, user_id: uuid.UUID, credits: int = 500, amount: str = "9.99", **fields: Any) -> Any:
        fields.setdefault("description", f"{credits} credits")
        return self.create(user_id=user_id, type="purchase", amount=amount, credits=credits, **fields)

    def usage(self, user_id: uuid.UUID, credits: int = -20, **fields: Any) -> Any:
        fields.setdefault("description", "Image generation")
        fields.setdefault("amount", "0")
        return self.create(user_id=user_id, type="usage", credits=credits, **fields)

    def funded_user(self, credits: int = 1000) -> uuid.UUID:
        user_id = self.register()
        assert self.purchase(user_id, credits=credits).status_code == 201
        return user_id

    def settle(self, transaction_id: str, status: str, token: str | None = None) -> Any:
        return self.client.patch(
            f"/api/transactions/{transaction_id}", json={"status": status}, headers=bearer(token or self.admin_token)
        )

    def balance(self, user_id: uuid.UUID) -> dict[str, Any]:
        response = self.client.get(f"/api/balance?user_id={user_id}", headers=bearer(self.admin_token))
        assert response.status_code == 200, response.json
        return response.json

    def history(self, owner: uuid.UUID, **params: Any) -> Any:
        query = {"user_id": str(owner), **params}
        return self.client.get("/api/transactions", query_string=query, headers=bearer(self.admin_token))

    def all_history(self, owner: uuid.UUID, cursor: str | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every page from ``cursor`` (or the top) to the end."""
        rows: list[dict[str, Any]] = []
        while True:
            page = self.history(owner, **params, **({"cursor": cursor} if cursor else {})).json
            rows.extend(page["data"])
            if not page["has_more"]:
                return rows
            cursor = page["next_cursor"]
