"""GET /api/transactions: newest-first history with keyset pagination."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from .helpers import bearer


def make_history(api, user_id, count):
    api.purchase(user_id, credits=10_000, description="funding")
    created = []
    for index in range(count):
        kind = api.usage if index % 3 else api.purchase
        status = ["completed", "pending", "failed"][index // 3 % 3] if kind == api.purchase else "completed"
        credits = -(index + 1) if kind == api.usage else index + 1
        created.append(kind(user_id, credits=credits, status=status, description=f"row {index}").json)
    return created


def test_history_is_newest_first_and_pages_cover_every_row_once(api):
    user_id = api.register()
    make_history(api, user_id, 24)
    seen = api.all_history(user_id, limit=5)
    assert len(seen) == 25
    assert len({row["id"] for row in seen}) == 25
    keys = [(row["created_at"], row["id"]) for row in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[-1]["description"] == "funding"


def test_default_page_is_twenty_with_a_cursor(api):
    user_id = api.register()
    make_history(api, user_id, 24)
    page = api.history(user_id).json
    assert len(page["data"]) == 20
    assert page["has_more"] is True
    assert isinstance(page["next_cursor"], str)


def test_last_page_has_no_cursor(api):
    user_id = api.register()
    api.purchase(user_id)
    page = api.history(user_id, limit=1).json
    assert page["has_more"] is False
    assert page["next_cursor"] is None


@pytest.mark.parametrize("params, expected", [
    ({"type": "purchase"}, lambda row: row["type"] == "purchase"),
    ({"type": "usage"}, lambda row: row["type"] == "usage"),
    ({"status": "pending"}, lambda row: row["status"] == "pending"),
    ({"type": "purchase", "status": "failed"}, lambda row: row["type"] == "purchase" and row["status"] == "failed"),
])
def test_filters_return_only_matching_rows_across_pages(api, params, expected):
    user_id = api.register()
    created = make_history(api, user_id, 18)
    everything = api.all_history(user_id, limit=100)
    filtered = api.all_history(user_id, limit=2, **params)
    assert filtered and all(expected(row) for row in filtered)
    assert filtered == [row for row in everything if expected(row)]
    assert len(created) == 18


def test_rows_inserted_between_page_fetches_cause_no_duplicate_or_gap(api):
    user_id = api.register()
    make_history(api, user_id, 9)
    before = api.all_history(user_id, limit=100)
    first = api.history(user_id, limit=4).json
    for index in range(5):
        api.purchase(user_id, credits=1, description=f"late {index}")
    rest = api.all_history(user_id, limit=4, cursor=first["next_cursor"])
    assert first["data"] + rest == before


def test_history_of_a_user_never_includes_another_users_rows(api):
    mine, theirs = api.register(), api.register()
    api.purchase(mine, description="mine")
    api.purchase(theirs, description="theirs")
    assert [row["description"] for row in api.all_history(mine)] == ["mine"]


def test_user_token_reads_its_own_history_without_naming_itself(api, client, user_token):
    user_id = api.register()
    api.purchase(user_id)
    response = client.get("/api/transactions", headers=bearer(user_token(user_id)))
    assert response.status_code == 200
    assert [row["user_id"] for row in response.json["data"]] == [str(user_id)]


def test_signed_in_user_never_registered_sees_an_empty_history(client, user_token):
    response = client.get("/api/transactions", headers=bearer(user_token(uuid.uuid4())))
    assert response.status_code == 200
    assert response.json == {"data": [], "has_more": False, "next_cursor": None}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"type": "chargeback"}, "type"),
        ({"status": "done"}, "status"),
        ({"user_id": "nope"}, "user_id"),
        ({"offset": "10"}, "offset"),
    ],
)
def test_invalid_query_is_422_naming_the_parameter(api, params, field):
    response = api.history(api.register(), **params)
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"
    assert field in response.json["errors"]


def test_limit_bounds_are_accepted(api):
    user_id = api.register()
    assert api.history(user_id, limit=1).status_code == 200
    assert api.history(user_id, limit=100).status_code == 200


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "",
        f"-{uuid.uuid4().hex}",
        f"12345678901234567-{uuid.uuid4().hex}",
        f"1700000000000000-{uuid.uuid4()}",
        f"1700000000000000-{uuid.uuid4().hex.upper()}",
        f"1700000000000000-{uuid.uuid4().hex}\n",
        "c" * 201,
    ],
    ids=["garbage", "empty", "no-time", "time-too-large", "dashed-uuid", "upper-case", "trailing-newline", "long"],
)
def test_bad_cursor_is_400(api, cursor):
    response = api.history(api.register(), cursor=cursor)
    assert response.status_code == 400
    assert response.json["code"] == "invalid_cursor"


def test_any_well_formed_cursor_is_a_position(api):
    user_id = api.register()
    api.purchase(user_id, description="old")
    response = api.history(user_id, cursor=f"9999999999999999-{'f' * 32}")
    assert response.status_code == 200
    assert [row["description"] for row in response.json["data"]] == ["old"]
    assert api.history(user_id, cursor=f"0-{'0' * 32}").json["data"] == []


def test_history_query_walks_the_index_without_sorting_or_offset(app, api):
    """Keyset pagination: page N costs what page 1 does, because the plan is an index range scan."""
    user_id = api.register()
    make_history(api, user_id, 3)
    cursor = api.history(user_id, limit=1).json["next_cursor"]
    from transactions_service.extensions import db
    from transactions_service.ledger.rules import decode_cursor

    created_at, last_id = decode_cursor(cursor)
    with app.app_context():
        db.session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0]
            for row in db.session.execute(
                text(
                    "EXPLAIN SELECT * FROM user_transactions WHERE user_id = :user_id "
                    "AND (created_at, id) < (:created_at, :id) ORDER BY created_at DESC, id DESC LIMIT 21"
                ),
                {"user_id": user_id, "created_at": created_at, "id": last_id},
            )
        )
        db.session.rollback()
    assert "ix_user_transactions_history" in plan
    assert "Index Cond" in plan and "created_at" in plan.split("Index Cond")[1]
    assert "Sort" not in plan


@pytest.mark.parametrize(
    "stored, shown",
    [
        ("2026-01-02 03:04:05+00", "2026-01-02T03:04:05.000000Z"),
        ("2026-01-02 03:04:05.12+00", "2026-01-02T03:04:05.120000Z"),
        ("2026-01-02 05:04:05.000001+02", "2026-01-02T03:04:05.000001Z"),
    ],
)
def test_times_read_back_in_utc_with_six_fraction_digits_however_they_were_stored(api, db_session, stored, shown):
    user_id = api.register()
    created = api.purchase(user_id).json
    db_session.execute(
        text("UPDATE user_transactions SET created_at = :at, updated_at = :at, hold_expires_at = NULL WHERE id = :id"),
        {"at": stored, "id": created["id"]},
    )
    db_session.commit()
    listed = api.history(user_id).json["data"][0]
    assert listed["created_at"] == listed["updated_at"] == shown
    fetched = api.client.get(f"/api/transactions/{created['id']}", headers=bearer(api.admin_token)).json
    assert fetched["created_at"] == shown


def test_the_same_query_string_reads_each_callers_own_history(api):
    first, second = api.funded_user(100), api.funded_user(200)
    for owner, credits in ((first, 100), (second, 200), (first, 100)):
        response = api.client.get("/api/transactions?limit=5", headers=bearer(api.user_token(owner)))
        assert [row["credits"] for row in response.json["data"]] == [credits]
    assert api.client.get("/api/transactions?limit=0", headers=bearer(api.user_token(first))).status_code == 422
    assert api.client.get("/api/transactions?limit=0", headers=bearer(api.user_token(first))).status_code == 422
