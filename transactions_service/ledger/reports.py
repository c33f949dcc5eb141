"""Reads over time: the books at an instant, a month's statement, usage summaries, and exports.

Everything here reads what the writes recorded (``store``) and changes
nothing. The books at an instant are the totals after the user's last lot
posting stamped before it; a statement's lines are the postings between two
instants, so ``opening + lines = closing`` holds by construction (their stamps
are in write order: migration 0011). Usage comes from the rollup the writes
keep, never from the history itself, so a summary's cost is its range's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app

from ..errors import ApiError, validation_error
from ..ids import utcnow
from ..replica import read_history
from . import store
from .rules import history_filter
from .store import Books, HistoryFilter, MonthLines

# How many rows of an export PostgreSQL writes at a time: the most the service holds of it at once.
EXPORT_CHUNK_ROWS = 5000
MAX_BUCKETS = 400
# Top values a summary split by a key shows; the rest is "other".
TOP_VALUES = 10


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant a day begins in a zone (where midnight is skipped, the instant the clock jumped to)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


@dataclass(frozen=True)
class BalanceAt:
    user_id: Any
    at: datetime
    balance: int
    held: int

    @property
    def available(self) -> int:
        return self.balance - self.held


def balance_at(user_id: Any, at: datetime) -> BalanceAt:
    """The user's balance and held credits as the ledger had recorded them at ``at`` (not in the future)."""
    if at > utcnow():
        raise validation_error({"at": ["Must not be in the future."]}, "A balance can be read as of now or earlier.")
    return BalanceAt(user_id, at, *store.books(user_id, at))


@dataclass(frozen=True)
class Statement:
    user_id: Any
    month: str
    tz: str
    starts_at: datetime
    ends_at: datetime
    final: bool
    opening: Books
    lines: MonthLines
    closing: Books


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def statement(user_id: Any, first: date, zone: ZoneInfo) -> Statement:
    """The month that begins on ``first`` in ``zone``: opening books, each kind of entry's credits, closing."""
    starts_at, ends_at = _midnight(first, zone), _midnight(_next_month(first), zone)
    now = utcnow()
    if starts_at > now:
        raise validation_error({"month": ["This month has not begun yet."]}, "A statement is for a month that has begun.")
    return Statement(
        user_id, f"{first:%Y-%m}", zone.key, starts_at, ends_at, ends_at <= now,
        store.books(user_id, starts_at), store.month_lines(user_id, starts_at, ends_at), store.books(user_id, ends_at),
    )


# --- usage summaries ------------------------------------------------------------------------------


def _bucket_start(day: date, granularity: str) -> date:
    if granularity == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks begin on Monday
    if granularity == "month":
        return day.replace(day=1)
    return day


def _step(day: date, granularity: str) -> date:
    return {"day": lambda: day + timedelta(days=1), "week": lambda: day + timedelta(days=7),
            "month": lambda: _next_month(day)}[granularity]()


# Without ``from``: 30 days, 12 weeks or 12 months, ending with the bucket that holds ``to``.
_DEFAULT_BUCKETS = {"day": 30, "week": 12, "month": 12}


def _default_first(last: date, granularity: str) -> date:
    first = _bucket_start(last, granularity)
    for _ in range(_DEFAULT_BUCKETS[granularity] - 1):
        first = _bucket_start(first - timedelta(days=1), granularity)
    return first


@dataclass(frozen=True)
class Bucket:
    start: date
    starts_at: datetime
    ends_at: datetime
    credits: int
    split: list[int]


@dataclass(frozen=True)
class UsageSummary:
    user_id: Any
    granularity: str
    first: date
    last: date
    tz: str
    group_by: str | None
    series: list[dict[str, str]]
    total: int
    buckets: list[Bucket]


def _days(first: date | None, last: date | None, granularity: str, zone: ZoneInfo) -> tuple[date, date, list[date]]:
    """The range's first day (the start of its bucket), its last, and each bucket's first day."""
    last = last or utcnow().astimezone(zone).date()
    first = _bucket_start(first or _default_first(last, granularity), granularity)
    if first > last:
        raise validation_error({"from": ["Must not be after to."]}, "The range ends before it begins.")
    starts = [first]
    while (following := _step(starts[-1], granularity)) <= last:
        if len(starts) == MAX_BUCKETS:
            raise validation_error({"from": [f"At most {MAX_BUCKETS} buckets."]},
                                   f"A summary holds at most {MAX_BUCKETS} buckets: shorten the range.")
        starts.append(following)
    return first, last, starts


_ORIGIN = store.PERIOD_ORIGIN


def _floor(moment: datetime, minutes: int) -> datetime:
    return _ORIGIN + (moment - _ORIGIN) // timedelta(minutes=minutes) * timedelta(minutes=minutes)


def _ceil(moment: datetime, minutes: int) -> datetime:
    floor = _floor(moment, minutes)
    return floor if floor == moment else floor + timedelta(minutes=minutes)


def _cut(start: datetime, end: datetime, level: int, bucket: int) -> list[store.Piece]:
    """[start, end) (on quarter hours) as the grain of ``level`` where it covers whole periods of it, and
    the finer grains either side."""
    grain = store.GRAINS[level]
    if level == 0:
        return [store.Piece(grain, start, end, bucket)] if start < end else []
    first, last = _ceil(start, grain), _floor(end, grain)
    if first >= last:
        return _cut(start, end, level - 1, bucket)
    return [*_cut(start, first, level - 1, bucket), store.Piece(grain, first, last, bucket),
            *_cut(last, end, level - 1, bucket)]


def pieces(starts_at: datetime, ends_at: datetime, bucket: int) -> list[store.Piece]:
    """[starts_at, ends_at) as the fewest ranges of the rollup's grains: whole UTC days where it holds
    them, then quarter days, hours and quarter hours towards its edges (a zone's midnight is on a quarter
    hour): a day in Berlin is 9 periods in 3 ranges, not 96 quarters.

    An edge off the quarter hours (a zone's offset before the 1970s, in a few places) counts from the
    quarter it falls in."""
    return _cut(_floor(starts_at, 15), _ceil(ends_at, 15), len(store.GRAINS) - 1, bucket)


def _split(user_id: Any, key: str, bounds: tuple[list[datetime], list[datetime]], totals: list[int]
           ) -> tuple[list[dict[str, str]], list[list[int]]]:
    """The series of a split by ``key`` (its top values, other, none) and each bucket's credits per series."""
    starts, ends = bounds
    top = store.top_values(user_id, key, pieces(starts[0], ends[-1], 0), TOP_VALUES)
    place = {value: i for i, value in enumerate(top)}
    split = [[0] * (len(top) + 2) for _ in totals]
    for n, value, credits in store.spent(user_id, _buckets_cut(starts, ends), key):
        split[n - 1][place.get(value, len(top))] += credits
    for bucket, total in zip(split, totals):
        bucket[-1] = total - sum(bucket[:-1])  # what no value of the key counted: usage without it
    series = [{"name": value, "kind": "value"} for value in top]
    return [*series, {"name": "other", "kind": "other"}, {"name": "none", "kind": "none"}], split


def _buckets_cut(starts: list[datetime], ends: list[datetime]) -> list[store.Piece]:
    return [piece for n, bounds in enumerate(zip(starts, ends), start=1) for piece in pieces(*bounds, n)]


def usage_summary(
    user_id: Any, *, granularity: str, first: date | None, last: date | None, zone: ZoneInfo, group_by: str | None
) -> UsageSummary:
    """Credits spent per day, week or month in ``zone`` from ``first`` to ``last`` (both included)."""
    key = None if group_by is None else group_by.removeprefix("metadata.")
    if key is not None and key not in current_app.config["USAGE_GROUP_KEYS"]:
        allowed = ", ".join(f"metadata.{name}" for name in current_app.config["USAGE_GROUP_KEYS"]) or "none"
        raise validation_error({"group_by": [f"Summaries split by {allowed}."]},
                               f"Usage is kept per value of USAGE_GROUP_KEYS only: {allowed}.")
    first, last, days = _days(first, last, granularity, zone)
    starts = [_midnight(day, zone) for day in days]
    ends = [*starts[1:], _midnight(last + timedelta(days=1), zone)]  # the last bucket ends with ``last``
    totals = [0] * len(days)
    for n, _value, credits in store.spent(user_id, _buckets_cut(starts, ends)):
        totals[n - 1] = credits
    series, split = ([], [[] for _ in days]) if key is None else _split(user_id, key, (starts, ends), totals)
    buckets = [Bucket(*bucket) for bucket in zip(days, starts, ends, totals, split)]
    return UsageSummary(user_id, granularity, first, last, zone.key, group_by, series, sum(totals), buckets)


# --- exports ---------------------------------------------------------------------------------------


def _too_large(limit: int) -> ApiError:
    return ApiError(
        422, "export_too_large",
        f"The export would hold more than {limit:,} rows; narrow it with created_after and created_before.",
        title="Export too large", extensions={"limit": limit},
    )


def export(user_id: Any, form: str, **filters: Any) -> Iterator[str]:
    """Every row of the history the filters select (``rules.history_filter``), newest first, as the lines
    of a ``form`` file.

    Refused before anything is written when it would hold more than EXPORT_MAX_ROWS rows. Then read a
    chunk at a time, each after the last (by keyset, so a chunk costs what a page does), each row as
    it was when its chunk was read.
    """
    limit, only = current_app.config["EXPORT_MAX_ROWS"], history_filter(**filters)
    if read_history(lambda engine: store.count_history(engine, user_id, limit + 1, only=only)) > limit:
        raise _too_large(limit)
    return _chunks(user_id, only, form)


def _chunks(user_id: Any, only: HistoryFilter, form: str) -> Iterator[str]:
    if form == "csv":
        yield ",".join(store.EXPORT_COLUMNS) + "\n"
    after = None
    while True:
        chunk = read_history(lambda engine: store.export_chunk(
            engine, user_id, EXPORT_CHUNK_ROWS, only=only, after=after, form=form))
        if chunk.rows:
            yield chunk.text
        if chunk.rows < EXPORT_CHUNK_ROWS:
            return
        after = chunk.last
