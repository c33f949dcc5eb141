"""The caller's own on every entry: metadata kept as written, and a reference unique per user and type."""

from __future__ import annotations

import threading

import pytest
import requests

from .helpers import bearer

MODEL = {"model": "gpt-4o", "generation_id": "gen_8f2c", "tool.name": "image-2"}


def test_metadata_is_kept_as_written_and_shown_on_every_read(api, user_token):
    user_id = api.funded_user(100)
    created = api.usage(user_id, credits=-5, metadata=MODEL)
    assert created.status_code == 201, created.json
    assert created.json["metadata"] == MODEL and list(created.json["metadata"]) == list(MODEL)
    assert created.get_data(as_text=True).count('"metadata":{"model":"gpt-4o","generation_id"') == 1
    read = api.client.get(f"/api/transactions/{created.json['id']}", headers=bearer(api.admin_token)).json
    page = api.history(user_id).json["data"]
    assert read["metadata"] == MODEL and page[0]["metadata"] == MODEL
    assert page[1]["metadata"] == {} and page[1]["reference"] is None  # the purchase: none given


def test_an_event_carries_the_metadata_at_the_write_and_at_the_settlement(api, service_token):
    from .test_events import of_user

    reader = service_token("events:read")
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-5, status="pending", metadata=MODEL, reference="job-1").json
    api.settle(hold["id"], "completed")
    created, updated = [e["data"] for e in of_user(api, reader, user_id) if e["data"].get("id") == hold["id"]]
    assert created["metadata"] == updated["metadata"] == MODEL
    assert created["reference"] == updated["reference"] == "job-1"


@pytest.mark.parametrize("metadata, key", [
    ({"bad key": "x"}, "bad key"),
    ({"k" * 41: "x"}, "k" * 40),
    ({"model": 4}, "model"),
    ({"model": None}, "model"),
    ({"model": "x" * 501}, "model"),
    ({"model": "line\nbreak"}, "model"),
    ({f"k{i}": "x" for i in range(21)}, None),
    (["model", "gpt"], None),
    ("model=gpt", None),
])
def test_malformed_metadata_is_refused_naming_the_key_and_writes_nothing(api, metadata, key):
    user_id = api.funded_user(100)
    response = api.usage(user_id, credits=-5, metadata=metadata)
    assert (response.status_code, response.json["code"]) == (422, "validation_error"), response.json
    errors = response.json["errors"]["metadata"]
    if key is not None:
        assert list(errors) == [key]
    assert len(api.history(user_id).json["data"]) == 1


def test_twenty_keys_of_forty_characters_values_of_five_hundred_and_a_reference_of_255_fit(api):
    user_id = api.funded_user(100)
    metadata = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(20)}
    response = api.usage(user_id, credits=-5, metadata=metadata, reference="r" * 255)
    assert response.status_code == 201, response.json
    assert response.json["metadata"] == metadata and response.json["reference"] == "r" * 255


def test_metadata_and_reference_cannot_be_changed_by_a_settlement(api):
    user_id = api.funded_user(100)
    hold = api.usage(user_id, credits=-5, status="pending", metadata=MODEL).json
    response = api.client.patch(f"/api/transactions/{hold['id']}", headers=bearer(api.admin_token),
                                json={"status": "completed", "metadata": {"model": "other"}})
    assert (response.status_code, response.json["code"]) == (422, "validation_error")


# --- references -------------------------------------------------------------------------------------


def test_a_second_write_with_a_reference_is_refused_naming_the_first(api):
    user_id = api.funded_user(100)
    first = api.usage(user_id, credits=-5, reference="gen_1").json
    again = api.usage(user_id, credits=-5, reference="gen_1")
    assert again.status_code == 409 and again.json["code"] == "duplicate_reference"
    assert again.json["transaction_id"] == first["id"] and first["id"] in again.json["detail"]
    assert api.client.get(f"/api/balance?user_id={user_id}", headers=bearer(api.admin_token)).json["balance"] == 95


def test_a_reference_is_unique_per_user_and_type_only(api):
    one, other = api.funded_user(100), api.funded_user(100)
    assert api.usage(one, credits=-5, reference="pi_1").status_code == 201
    assert api.usage(other, credits=-5, reference="pi_1").status_code == 201  # another user
    assert api.purchase(one, reference="pi_1").status_code == 201  # another type


def test_a_retry_with_its_key_is_a_replay_not_a_duplicate_reference(api):
    user_id = api.funded_user(100)
    first = api.usage(user_id, credits=-5, reference="gen_2", key="job-2")
    again = api.usage(user_id, credits=-5, reference="gen_2", key="job-2")
    assert (first.status_code, again.status_code) == (201, 201), again.json
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    other_key = api.usage(user_id, credits=-5, reference="gen_2", key="job-3")
    assert (other_key.status_code, other_key.json["code"]) == (409, "duplicate_reference")


@pytest.mark.parametrize("reference", ["", " ", "r" * 256, "line\nbreak", None, 7])
def test_a_malformed_reference_is_refused(api, reference):
    response = api.usage(api.funded_user(100), credits=-5, reference=reference)
    assert (response.status_code, response.json["code"]) == (422, "validation_error")
    assert "reference" in response.json["errors"]


@pytest.mark.slow
def test_fifty_concurrent_writes_with_one_reference_record_one(api, live_server):
    user_id = api.funded_user(1000)
    statuses, body = [], {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -1,
                          "description": "race", "reference": "gen_race"}
    start = threading.Barrier(50)

    def spend(index):
        start.wait()
        response = requests.post(f"{live_server}/api/transactions", json=body, timeout=30,
                                 headers={**bearer(api.admin_token), "Idempotency-Key": f"race-{index}"})
        statuses.append((response.status_code, response.json().get("code")))

    threads = [threading.Thread(target=spend, args=(index,)) for index in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count((201, None)) == 1
    assert statuses.count((409, "duplicate_reference")) == 49
    balance = api.client.get(f"/api/balance?user_id={user_id}", headers=bearer(api.admin_token)).json
    assert balance["balance"] == 999


# --- finding entries again: by reference, by time ---------------------------------------------------


def test_history_finds_an_entry_by_its_reference(api):
    user_id = api.funded_user(100)
    usage = api.usage(user_id, credits=-5, reference="gen_9").json
    api.usage(user_id, credits=-5, reference="gen_10")
    page = api.history(user_id, reference="gen_9").json
    assert [t["id"] for t in page["data"]] == [usage["id"]] and page["has_more"] is False
    assert api.history(user_id, reference="nothing").json["data"] == []


def test_history_between_two_instants_is_half_open_and_pages_within_them(api, engine):
    from sqlalchemy import text

    user_id = api.register()
    ids = [api.purchase(user_id, credits=10 + day).json["id"] for day in range(5)]
    with engine.begin() as connection:  # one a day, 1 to 5 November
        for day, transaction_id in enumerate(ids, start=1):
            connection.execute(text("UPDATE user_transactions SET created_at = :at WHERE id = :id"),
                               {"at": f"2026-11-0{day}T00:00:00Z", "id": transaction_id})
    window = {"created_after": "2026-11-02T00:00:00Z", "created_before": "2026-11-05T00:00:00Z"}
    first = api.history(user_id, limit=2, **window).json
    second = api.history(user_id, limit=2, cursor=first["next_cursor"], **window).json
    assert [t["id"] for t in first["data"] + second["data"]] == [ids[3], ids[2], ids[1]]
    assert second["has_more"] is False
    offset = api.history(user_id, created_after="2026-11-04T01:00:00+01:00").json["data"]
    assert [t["id"] for t in offset] == [ids[4], ids[3]]


@pytest.mark.parametrize("query, field", [
    ({"created_after": "2026-11-02"}, "created_after"),
    ({"created_after": "2026-11-02T00:00:00"}, "created_after"),  # no offset: which instant?
    ({"created_after": "yesterday"}, "created_after"),
    ({"reference": ""}, "reference"),
])
def test_a_malformed_filter_is_refused_naming_it(api, query, field):
    response = api.history(api.register(), **query)
    assert (response.status_code, response.json["code"]) == (422, "validation_error")
    assert field in response.json["errors"]


def history_plan(engine, filtered, user_id="3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10"):
    """The plan of a second page of the history statement with these filters."""
    from sqlalchemy import text

    from transactions_service.ledger import store

    sql = store._history_page(filtered, True)
    values = {"user_id": f"'{user_id}'", "limit": "21", "reference": "'gen_1'", "type": "'usage'",
              "created_after": "'2026-11-01T00:00:00Z'", "created_before": "'2026-12-01T00:00:00Z'",
              "after_created_at": "'2026-11-20T00:00:00Z'", "after_id": "'01a23261-857a-7485-bb63-2fcb2c803cd5'"}
    for name, value in values.items():
        sql = sql.replace(f"%({name})s", value)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join(row[0] for row in connection.execute(text("EXPLAIN (COSTS OFF) " + sql)))


@pytest.mark.parametrize("filtered", [(), ("created_after", "created_before"), ("type", "created_after")])
def test_a_page_between_two_instants_is_a_range_of_the_history_index_without_a_sort(engine, filtered):
    plan = history_plan(engine, filtered)
    assert "ix_user_transactions_history" in plan and "Sort" not in plan, plan


def test_a_reference_is_found_on_its_own_index_in_a_long_history(api, engine):
    from sqlalchemy import text

    user_id = api.register()
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status, created_at)"
            " SELECT gen_random_uuid(), :user_id, 'grant', 0, 1, 'seed', 'completed',"
            " now() - make_interval(secs => g) FROM generate_series(1, 20000) AS g"), {"user_id": user_id})
        connection.execute(text("ANALYZE user_transactions"))
    assert "uq_user_transactions_reference" in history_plan(engine, ("reference",), user_id)


@pytest.mark.parametrize("moment", ["2026-11-02T00:00:00+22:37", "0001-01-01T00:00:00+01:00"])
def test_an_instant_with_an_offset_postgresql_cannot_read_is_taken_to_utc_or_refused(api, moment):
    response = api.history(api.register(), created_after=moment)
    assert response.status_code in (200, 422), response.json
    if response.status_code == 422:
        assert "created_after" in response.json["errors"]


# --- finding entries again: by metadata --------------------------------------------------------------


def test_history_finds_entries_by_their_metadata_all_pairs_matching(api):
    user_id = api.funded_user(1000)
    made = {}
    for model, size in [("gpt-4o", "small"), ("gpt-4o", "large"), ("o3", "small"), ("gpt-4o", "small")]:
        made.setdefault((model, size), []).append(
            api.usage(user_id, credits=-1, metadata={"model": model, "size": size}).json["id"])
    by_model = api.history(user_id, **{"metadata[model]": "gpt-4o"}).json["data"]
    assert {t["id"] for t in by_model} == set(made[("gpt-4o", "small")] + made[("gpt-4o", "large")])
    assert [t["created_at"] for t in by_model] == sorted((t["created_at"] for t in by_model), reverse=True)
    both = api.history(user_id, **{"metadata[model]": "gpt-4o", "metadata[size]": "small"}).json["data"]
    assert {t["id"] for t in both} == set(made[("gpt-4o", "small")])
    assert api.history(user_id, **{"metadata[model]": "gpt-5"}).json["data"] == []


def test_a_metadata_filtered_history_pages_by_cursor(api):
    user_id = api.funded_user(1000)
    ids = [api.usage(user_id, credits=-1, metadata={"model": "o3"}).json["id"] for _ in range(5)]
    api.usage(user_id, credits=-1, metadata={"model": "other"})
    first = api.history(user_id, limit=2, **{"metadata[model]": "o3"}).json
    rest = api.all_history(user_id, cursor=first["next_cursor"], limit=2, **{"metadata[model]": "o3"})
    assert [t["id"] for t in first["data"] + rest] == ids[::-1]


@pytest.mark.parametrize("query, field", [
    ({"metadata[bad key]": "x"}, "metadata[bad key]"),
    ({"metadata[a]": "1", "metadata[b]": "2", "metadata[c]": "3", "metadata[d]": "4"}, "metadata"),
    ({"metadata[model]": "x" * 501}, "metadata[model]"),
])
def test_a_malformed_metadata_filter_is_refused(api, query, field):
    response = api.history(api.register(), **query)
    assert (response.status_code, response.json["code"]) == (422, "validation_error"), response.json
    assert field in response.json["errors"]


def test_a_metadata_filter_is_a_range_of_its_own_index(api, engine):
    from sqlalchemy import text

    from transactions_service.ledger import store

    sql = store._metadata_history_page(("type",), 2, True)
    values = {"user_id": "'3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10'", "limit": "21", "type": "'usage'",
              "key_0": "'model'", "value_0": "'o3'", "key_1": "'size'", "value_1": "'small'",
              "after_created_at": "'2026-11-20T00:00:00Z'", "after_id": "'01a23261-857a-7485-bb63-2fcb2c803cd5'"}
    for name, value in values.items():
        sql = sql.replace(f"%({name})s", value)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(row[0] for row in connection.execute(text("EXPLAIN (COSTS OFF) " + sql)))
    assert "ix_transaction_metadata_lookup" in plan and "Sort" not in plan, plan


def test_an_interval_that_ends_before_it_starts_is_an_empty_page(api):
    user_id = api.funded_user(100)
    page = api.history(user_id, created_after="2026-11-02T00:00:00Z", created_before="2026-11-01T00:00:00Z").json
    assert (page["data"], page["has_more"]) == ([], False)


def test_the_metadata_index_holds_exactly_the_pairs_of_every_row(api, engine):
    from sqlalchemy import text

    user_id = api.funded_user(100)
    api.usage(user_id, credits=-1, metadata=MODEL)
    api.usage(user_id, credits=-1, metadata={"model": "o3"}, status="pending")
    api.usage(user_id, credits=-1)
    assert api.usage(user_id, credits=-1000, metadata={"model": "refused"}).status_code == 409
    with engine.connect() as connection:
        pairs = set(connection.execute(text(
            "SELECT t.id, p.key, p.value, t.created_at FROM user_transactions AS t, json_each_text(t.metadata) AS p")))
        indexed = set(connection.execute(text(
            "SELECT transaction_id, key, value, created_at FROM transaction_metadata")))
    assert indexed == pairs and len(pairs) == 4
