"""GET /api/balance: balance, held and available credits."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from transactions_service.ledger.models import TransactionStatus, TransactionType, UserBalance, UserTransaction

from .helpers import bearer, totals


def test_balance_counts_completed_credits_and_holds_pending_usage(api):
    user_id = api.register()
    api.purchase(user_id, credits=500)
    api.purchase(user_id, credits=1200, status="pending")
    api.purchase(user_id, credits=300, status="failed")
    api.usage(user_id, credits=-20)
    api.usage(user_id, credits=-50, status="pending")
    api.usage(user_id, credits=-7, status="failed")
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 480, "held": 50, "available": 430}


def test_user_reads_own_balance(api, client, user_token):
    user_id = api.funded_user(250)
    response = client.get("/api/balance", headers=bearer(user_token(user_id)))
    assert response.status_code == 200
    assert totals(response.json) == {"user_id": str(user_id), "balance": 250, "held": 0, "available": 250}


def test_signed_in_user_never_registered_has_zero_balance(client, user_token):
    user_id = uuid.uuid4()
    response = client.get("/api/balance", headers=bearer(user_token(user_id)))
    assert response.status_code == 200
    assert totals(response.json) == {"user_id": str(user_id), "balance": 0, "held": 0, "available": 0}


def test_balance_row_agrees_with_the_ledger(api, db_session):
    user_id = api.funded_user(1000)
    for credits in (-10, -20, -30):
        hold = api.usage(user_id, credits=credits, status="pending").json
        api.settle(hold["id"], "completed" if credits != -20 else "failed")
    completed = db_session.scalar(
        select(func.coalesce(func.sum(UserTransaction.credits), 0)).where(
            UserTransaction.user_id == user_id, UserTransaction.status == TransactionStatus.COMPLETED
        )
    )
    held = db_session.scalar(
        select(func.coalesce(-func.sum(UserTransaction.credits), 0)).where(
            UserTransaction.user_id == user_id,
            UserTransaction.status == TransactionStatus.PENDING,
            UserTransaction.type == TransactionType.USAGE,
        )
    )
    row = db_session.get(UserBalance, user_id)
    assert (row.balance, row.held) == (completed, held) == (960, 0)
