"""The books at an instant, statements, usage summaries and exports, over a history spread across months."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transactions_service.ids import utcnow
from transactions_service.ledger import reports, rules
from transactions_service.ledger.models import TransactionStatus

from .helpers import SEEDER, bearer, write_at

LINES = ("purchases", "grants", "usage", "refunds", "reversals", "adjustments", "expirations", "carried_in")


def z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def get(api, path, token=None):
    return api.client.get(path, headers=bearer(token or api.admin_token))


@pytest.fixture
def months(api, app):
    """A user with four months of history: purchases, usage by model, a hold settled the next month, a
    grant that expires, a refund, a reversal and an adjustment."""
    user_id = api.register()
    start = datetime(2026, 7, 30, 22, 0, tzinfo=timezone.utc)
    write_at(app, user_id, start, "purchase", 1000, amount="10.00")
    write_at(app, user_id, start + timedelta(hours=3), "usage", -40, metadata={"model": "large"})
    hold = write_at(app, user_id, start + timedelta(days=1, hours=3), "usage", -25, status="pending", hold_expires_in=3600)
    with app.test_request_context():
        rules.settle_transaction(SEEDER, uuid.UUID(hold.id), TransactionStatus.COMPLETED,
                                 now=start + timedelta(days=1, hours=3, minutes=30))
    write_at(app, user_id, start + timedelta(days=5), "grant", 200, expires_at=start + timedelta(days=40))
    spent = write_at(app, user_id, start + timedelta(days=33), "usage", -70, metadata={"model": "small"})
    bought = write_at(app, user_id, start + timedelta(days=34), "purchase", 300, amount="3.00")
    write_at(app, user_id, start + timedelta(days=45), "usage", -10)  # records the grant's expiry first
    with app.test_request_context():
        rules.expire_lots_of(user_id, start + timedelta(days=45))
    write_at(app, user_id, start + timedelta(days=61), "reversal", 20, reverses=uuid.UUID(spent.id))
    write_at(app, user_id, start + timedelta(days=62), "refund", -100, amount="1.00", refunds=uuid.UUID(bought.id))
    write_at(app, user_id, start + timedelta(days=80), "adjustment", -5, description="support")
    return user_id


def test_every_month_opens_where_the_last_closed_and_adds_up(api, months):
    statements = [get(api, f"/api/statements?user_id={months}&month=2026-{m:02d}").json for m in (7, 8, 9, 10, 11)]
    assert statements[0]["opening_balance"] == 0
    for month in statements:
        assert month["opening_balance"] + sum(month[line] for line in LINES) == month["closing_balance"]
        at = get(api, f"/api/balance?user_id={months}&at={month['ends_at']}").json
        assert (at["balance"], at["held"]) == (month["closing_balance"], month["closing_held"])
    for before, after in zip(statements, statements[1:]):
        assert after["opening_balance"] == before["closing_balance"]
    july, august, september, october, _ = statements
    assert (july["purchases"], july["usage"], july["amount_paid"]) == (1000, -40, "10.00")
    # The hold made on 1 August completes that day; the grant of 4 August expires on 8 September, and
    # the expiry is recorded by the next write, on the 13th; the 20 a reversal gives back to it lapse too.
    assert (august["usage"], august["grants"], august["purchases"]) == (-25, 200, 0)
    assert (september["usage"], september["expirations"], september["purchases"]) == (-70 - 10, -130 - 20, 300)
    assert (september["reversals"], september["refunds"], september["amount_refunded"]) == (20, -100, "1.00")
    assert september["amount_paid"] == "3.00"
    assert (october["adjustments"], october["closing_balance"], october["final"]) == (-5, 1120, True)


def test_a_month_in_a_time_zone_begins_at_its_own_midnight(api, months):
    utc = get(api, f"/api/statements?user_id={months}&month=2026-07").json
    new_york = get(api, f"/api/statements?user_id={months}&month=2026-07&tz=America/New_York").json
    assert new_york["starts_at"] == "2026-07-01T04:00:00.000000Z"
    assert new_york["ends_at"] == "2026-08-01T04:00:00.000000Z"
    # The hold made and consumed after 01:00 UTC on 1 August is still July in New York.
    assert (utc["usage"], new_york["usage"]) == (-40, -65)
    assert new_york["tz"] == "America/New_York"


def test_statements_refuse_what_they_cannot_answer(api):
    user_id = api.register()
    next_year = utcnow().year + 1
    for query, field in ((f"month={next_year}-01", "month"), ("month=2026-13", "month"), ("month=26-01", "month"),
                         ("month=2026-01&tz=Mars/Olympus", "tz"), ("month=2026-01&tz=../../etc/passwd", "tz"),
                         ("", "month")):
        response = get(api, f"/api/statements?user_id={user_id}&{query}")
        assert response.status_code == 422, query
        assert field in response.json["errors"], query


def test_the_books_at_an_instant(api, months):
    before = get(api, f"/api/balance?user_id={months}&at=2026-07-30T21:59:59Z").json
    assert (before["balance"], before["held"], before["available"]) == (0, 0, 0)
    after_hold = get(api, f"/api/balance?user_id={months}&at=2026-08-01T03:15:00%2B02:00").json
    assert (after_hold["balance"], after_hold["held"]) == (960, 25)
    assert after_hold["at"] == "2026-08-01T01:15:00.000000Z"
    # An entry stamped at the instant itself is not yet in the books of that instant.
    assert get(api, f"/api/balance?user_id={months}&at=2026-07-30T22:00:00Z").json["balance"] == 0
    future = get(api, f"/api/balance?user_id={months}&at={z(utcnow() + timedelta(minutes=5))}")
    assert future.status_code == 422 and "at" in future.json["errors"]


def test_a_user_reads_only_their_own_reports(api, user_token, months):
    other = api.register()
    for path in ("/api/balance?at=2026-08-01T00:00:00Z", "/api/statements?month=2026-08", "/api/usage/summary",
                 "/api/transactions/export"):
        assert get(api, f"{path}{'&' if '?' in path else '?'}user_id={months}", user_token(other)).status_code == 403
        assert get(api, path, user_token(months)).status_code == 200, path


# --- usage summaries -------------------------------------------------------------------------------


def summary(api, user_id, query):
    response = get(api, f"/api/usage/summary?user_id={user_id}&{query}")
    assert response.status_code == 200, response.json
    return response.json


def test_usage_per_day_counts_completed_usage_less_reversals_at_their_own_time(api, months):
    days = summary(api, months, "from=2026-07-30&to=2026-09-30")
    spent = {bucket["start"]: bucket["credits"] for bucket in days["buckets"] if bucket["credits"]}
    # The hold counts on the day it was made, once completed; the reversal on its own day.
    assert spent == {"2026-07-31": 40, "2026-08-01": 25, "2026-09-01": 70, "2026-09-13": 10, "2026-09-29": -20}
    assert days["total"] == 125 and len(days["buckets"]) == 63
    assert (days["series"], days["buckets"][0]["split"]) == ([], [])


def test_usage_split_by_model_counts_a_reversal_against_its_usage(api, months):
    split = summary(api, months, "granularity=month&from=2026-07-01&to=2026-09-30&group_by=metadata.model")
    assert [s["name"] for s in split["series"]] == ["small", "large", "other", "none"]
    by_month = {bucket["start"]: bucket["split"] for bucket in split["buckets"]}
    assert by_month == {"2026-07-01": [0, 40, 0, 0], "2026-08-01": [0, 0, 0, 25],
                        "2026-09-01": [70 - 20, 0, 0, 10]}
    for bucket in split["buckets"]:
        assert sum(bucket["split"]) == bucket["credits"]


def test_usage_buckets_follow_the_time_zone(api, months):
    kolkata = summary(api, months, "from=2026-07-30&to=2026-07-31&tz=Asia/Kolkata")
    # 31 July in Kolkata begins at 18:30 UTC on the 30th, half past a UTC hour: a quarter's boundary.
    assert [(b["start"], b["credits"]) for b in kolkata["buckets"]] == [("2026-07-30", 0), ("2026-07-31", 40)]
    assert kolkata["buckets"][1]["starts_at"] == "2026-07-30T18:30:00.000000Z"


def test_weeks_begin_on_monday_and_the_default_is_the_last_thirty_days(api, months):
    weeks = summary(api, months, "granularity=week&from=2026-08-05&to=2026-08-20")
    assert [b["start"] for b in weeks["buckets"]] == ["2026-08-03", "2026-08-10", "2026-08-17"]
    assert weeks["buckets"][-1]["ends_at"] == "2026-08-21T00:00:00.000000Z"  # the range ends with "to"
    default = summary(api, months, "")
    assert len(default["buckets"]) == 30 and default["to"] == f"{utcnow():%Y-%m-%d}"


def test_the_top_ten_values_and_the_rest(api, app):
    user_id = api.funded_user(10_000)
    for i in range(12):
        assert api.usage(user_id, credits=-(i + 1), metadata={"model": f"m{i:02d}"}).status_code == 201
    assert api.usage(user_id, credits=-7).status_code == 201
    split = summary(api, user_id, "group_by=metadata.model")
    names = [s["name"] for s in split["series"]]
    assert names == [f"m{i:02d}" for i in range(11, 1, -1)] + ["other", "none"]
    today = split["buckets"][-1]
    assert today["split"][-2:] == [1 + 2, 7] and today["credits"] == sum(range(1, 13)) + 7


def test_summaries_refuse_what_they_cannot_answer(api):
    user_id = api.register()
    for query, field in (("group_by=metadata.feature", "group_by"), ("group_by=model", "group_by"),
                         ("from=2026-02-01&to=2026-01-01", "from"), ("granularity=hour", "granularity"),
                         ("from=1900-01-01&to=2026-01-01", "from"), ("from=2000-01-01&to=2026-01-01", "from"),
                         ("tz=Not/AZone", "tz"), ("to=2026-02-30", "to")):
        response = get(api, f"/api/usage/summary?user_id={user_id}&{query}")
        assert response.status_code == 422, query
        assert field in response.json["errors"], (query, response.json)


# --- exports ---------------------------------------------------------------------------------------


def export(api, user_id, query=""):
    response = get(api, f"/api/transactions/export?user_id={user_id}&{query}")
    assert response.status_code == 200, response.data[:500]
    return response


def test_the_csv_export_is_the_history_with_a_header(api, months):
    response = export(api, months)
    assert response.mimetype == "text/csv"
    name = f'attachment; filename="transactions-{months}-{utcnow():%Y-%m-%d}.csv"'
    assert response.headers["Content-Disposition"] == name
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    history = api.all_history(months)
    assert [row["id"] for row in rows] == [t["id"] for t in history]
    for row, shown in zip(rows, history):
        assert int(row["credits"]) == shown["credits"] and row["amount"] == shown["amount"]
        assert json.loads(row["metadata"]) == shown["metadata"]
        assert row["created_at"] == shown["created_at"] and row["reference"] == (shown["reference"] or "")


def test_numbers_are_bare_and_formulas_are_not_run(api):
    user_id = api.funded_user(100)
    api.usage(user_id, credits=-3, description='=HYPERLINK("x","y")', reference="-1+1")
    text = export(api, user_id, "type=usage").get_data(as_text=True)
    line = text.splitlines()[1]
    assert ',usage,completed,-3,0.00,"\'=HYPERLINK(""x"",""y"")","\'-1+1","{}",' in line


def test_the_jsonl_export_is_each_transaction_as_the_api_shows_it(api, months):
    response = export(api, months, "format=jsonl&type=usage")
    assert response.mimetype == "application/jsonl"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines == api.all_history(months, type="usage")


def test_an_export_reads_chunk_after_chunk_without_losing_a_row(api, monkeypatch):
    user_id = api.funded_user(1000)
    for i in range(11):
        api.usage(user_id, credits=-1, metadata={"model": "a" if i % 2 else "b"})
    monkeypatch.setattr(reports, "EXPORT_CHUNK_ROWS", 3)
    ids = [json.loads(line)["id"] for line in export(api, user_id, "format=jsonl").get_data(as_text=True).splitlines()]
    assert ids == [t["id"] for t in api.all_history(user_id)] and len(ids) == 12
    filtered = export(api, user_id, "format=jsonl&metadata[model]=a").get_data(as_text=True).splitlines()
    assert [json.loads(line)["id"] for line in filtered] == [t["id"] for t in api.all_history(user_id, **{
        "metadata[model]": "a"})]


def test_an_export_too_large_is_refused_before_anything_is_sent(api, app):
    user_id = api.funded_user(1000)
    api.usage(user_id, credits=-1)
    app.config["EXPORT_MAX_ROWS"] = 1
    try:
        response = get(api, f"/api/transactions/export?user_id={user_id}")
        assert response.status_code == 422 and response.json["code"] == "export_too_large"
        assert response.json["limit"] == 1
        assert export(api, user_id, "type=usage").status_code == 200
    finally:
        app.config["EXPORT_MAX_ROWS"] = 1_000_000


def test_an_empty_export_is_a_header(api):
    user_id = api.register()
    assert export(api, user_id).get_data(as_text=True).splitlines() == [
        "id,created_at,updated_at,type,status,credits,amount,description,reference,metadata,hold_expires_at,"
        "refunds,reverses,user_id"]
    assert export(api, user_id, "format=jsonl").get_data() == b""



def test_the_export_is_not_taken_for_a_transaction_id(api):
    """/api/transactions/export is its own route: it is not offered the methods of a transaction's."""
    options = api.client.open("/api/transactions/export", method="OPTIONS", headers=bearer(api.admin_token))
    assert "PATCH" not in options.headers["Allow"]
    patch = api.client.patch("/api/transactions/export", json={"status": "completed"}, headers=bearer(api.admin_token))
    assert patch.status_code == 405


ORIGIN = datetime(2000, 1, 1, tzinfo=timezone.utc)


@given(start=st.integers(0, 10**6), quarters=st.integers(1, 5000))
def test_a_bucket_is_cut_into_aligned_pieces_that_tile_it(start, quarters):
    """Whatever the bucket, its pieces cover it exactly, in order, each a whole number of its grain."""
    starts_at = ORIGIN + timedelta(minutes=15 * start)
    ends_at = starts_at + timedelta(minutes=15 * quarters)
    cut = reports.pieces(starts_at, ends_at, 1)
    assert (cut[0].starts_at, cut[-1].ends_at) == (starts_at, ends_at)
    assert all(a.ends_at == b.starts_at for a, b in zip(cut, cut[1:])) and len(cut) <= 7
    for piece in cut:
        grain = timedelta(minutes=piece.minutes)
        assert piece.starts_at < piece.ends_at
        assert (piece.starts_at - ORIGIN) % grain == (piece.ends_at - ORIGIN) % grain == timedelta(0)
