"""Pending usage holds credits until settled, released, or lapsed."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from transactions_service.ledger import rules as ledger
from transactions_service.ledger.models import UserTransaction

from .helpers import lapse, totals



def stored(db_session, transaction_id):
    db_session.expire_all()
    return db_session.get(UserTransaction, transaction_id)


def test_pending_usage_holds_for_the_default_ttl(api):
    hold = api.usage(api.funded_user(100), status="pending").json
    created = datetime.fromisoformat(hold["created_at"])
    assert datetime.fromisoformat(hold["hold_expires_at"]) - created == timedelta(seconds=3600)


def test_caller_may_ask_for_a_shorter_hold(api):
    hold = api.usage(api.funded_user(100), status="pending", hold_expires_in=90).json
    created = datetime.fromisoformat(hold["created_at"])
    assert datetime.fromisoformat(hold["hold_expires_at"]) - created == timedelta(seconds=90)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "pending", "hold_expires_in": 3601},
        {"status": "pending", "hold_expires_in": 0},
        {"status": "pending", "hold_expires_in": 60.5},
        {"status": "completed", "hold_expires_in": 60},
    ],
    ids=["longer-than-ttl", "zero", "not-an-integer", "completed-usage"],
)
def test_invalid_hold_expiry_is_422_and_writes_nothing(api, fields):
    user_id = api.funded_user(100)
    response = api.usage(user_id, **fields)
    assert response.status_code == 422
    assert "hold_expires_in" in response.json["errors"]
    assert api.balance(user_id)["held"] == 0


def test_purchases_never_hold_or_expire(api):
    user_id = api.register()
    response = api.purchase(user_id, status="pending", hold_expires_in=60)
    assert response.status_code == 422
    pending = api.purchase(user_id, status="pending").json
    assert pending["hold_expires_at"] is None


def test_lapsed_hold_stops_counting_at_once(api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    lapse(db_session, hold["id"])
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 100, "held": 0, "available": 100}


def test_spend_is_not_refused_because_of_a_lapsed_hold(api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-80, status="pending").json
    lapse(db_session, hold["id"])
    response = api.usage(user_id, credits=-90)
    assert response.status_code == 201
    row = stored(db_session, hold["id"])
    assert (row.status.value, row.failure_reason) == ("failed", "hold_expired")
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 10, "held": 0, "available": 10}


def test_completing_a_lapsed_hold_is_409_hold_expired_and_releases_it(api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    lapse(db_session, hold["id"])
    response = api.settle(hold["id"], "completed")
    assert response.status_code == 409
    assert response.json["code"] == "hold_expired"
    assert stored(db_session, hold["id"]).status.value == "failed"
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 100, "held": 0, "available": 100}
    again = api.settle(hold["id"], "completed")
    assert again.json["code"] == "hold_expired"


def test_releasing_a_lapsed_hold_is_200(api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    lapse(db_session, hold["id"])
    response = api.settle(hold["id"], "failed")
    assert response.status_code == 200
    assert response.json["status"] == "failed"
    assert api.balance(user_id)["available"] == 100


def test_live_hold_settles_normally(api):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending", hold_expires_in=600).json
    assert api.settle(hold["id"], "completed").status_code == 200
    assert api.balance(user_id)["balance"] == 70


def run_expire(app, *args):
    return app.test_cli_runner().invoke(args=["transactions", "expire-holds", *args])


def test_expire_holds_fails_only_lapsed_holds_and_releases_their_credits(app, api, db_session):
    user_id = api.funded_user(1000)
    lapsed = [api.usage(user_id, credits=-10, status="pending").json for _ in range(5)]
    live = api.usage(user_id, credits=-7, status="pending").json
    old_purchase = api.purchase(user_id, status="pending").json
    for hold in lapsed:
        lapse(db_session, hold["id"])
    result = run_expire(app, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "released 5 holds" in result.output
    assert "so far" in result.output  # progress for each batch
    for hold in lapsed:
        row = stored(db_session, hold["id"])
        assert (row.status.value, row.failure_reason) == ("failed", "hold_expired")
    assert stored(db_session, live["id"]).status.value == "pending"
    assert stored(db_session, old_purchase["id"]).status.value == "pending"
    assert totals(api.balance(user_id)) == {"user_id": str(user_id), "balance": 1000, "held": 7, "available": 993}
    assert "released 0 holds, expired 0 lots" in run_expire(app).output


def test_settling_after_the_job_expired_the_hold_is_409_hold_expired(app, api, db_session):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-30, status="pending").json
    lapse(db_session, hold["id"])
    run_expire(app)
    assert api.settle(hold["id"], "completed").json["code"] == "hold_expired"
    assert api.settle(hold["id"], "failed").status_code == 200


def test_concurrent_expiry_runs_release_each_hold_once(app, api, db_session):
    users = [api.funded_user(1000) for _ in range(4)]
    holds = [api.usage(user, credits=-3, status="pending").json for user in users for _ in range(25)]
    db_session.execute(
        update(UserTransaction)
        .where(UserTransaction.id.in_([hold["id"] for hold in holds]))
        .values(hold_expires_at=datetime.now().astimezone() - timedelta(seconds=1))
    )
    db_session.commit()
    released = []
    barrier = threading.Barrier(4)

    def run():
        with app.app_context():
            barrier.wait()
            released.append(ledger.expire(batch_size=7)[0])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(released) == 100
    for user in users:
        assert totals(api.balance(user)) == {"user_id": str(user), "balance": 1000, "held": 0, "available": 1000}
    statuses = db_session.scalars(select(UserTransaction.failure_reason).where(UserTransaction.type == "usage")).all()
    assert statuses == ["hold_expired"] * 100
