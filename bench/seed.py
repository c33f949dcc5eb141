"""Benchmark data: ``python -m bench.seed`` fills the ledger with a realistic history, fast.

Development tooling, not part of the service: the production app has no
command for it. The history is one time-ordered stream: each user's events are
sorted uniform times in that user's active window, and a heap merges the
users, so rows reach the table in the order production would have written
them (ids, physical order and time agree). The simulated users behave as the
callers would: a usage is generated only when the user has the credits
available, and a user running low buys more. The rows are streamed into
PostgreSQL with binary ``COPY`` from a generator: memory grows with the number
of users, never with the number of rows. The balance rows are then made by the
ledger's own statement (``store.open_balances``, which also opens each user's
lot), in the same transaction,
not from the simulation's numbers. Each usage row carries the model that did
it as metadata (``{"model": ...}``) and each purchase the payment service's
checkout id as its reference; the metadata index and the usage rollup are then
filled from the loaded rows by SQL, the rollup by migration 0011's own
statement. ``python -m bench.seed --check`` verifies the ledger's invariants
with SQL, and seeding runs it at the end.

    python -m bench.seed --users 10000 --transactions 1000000 [--heavy-user UUID ...]
    python -m bench.seed --check
"""

from __future__ import annotations

import heapq
import importlib.util
import io
import random
import resource
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import psycopg2
from flask import current_app
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from transactions_service import create_app
from transactions_service.extensions import db
from transactions_service.ledger import store
from transactions_service.ledger.models import HOLD_EXPIRED

SECOND = 1_000_000  # the stream works in integer microseconds since the Unix epoch
DAY = 86_400 * SECOND
HISTORY_SPAN = 730 * DAY
PG_EPOCH = 946_684_800 * SECOND  # binary COPY counts timestamps from 2000-01-01 UTC

# (description, price in dollars, credits): what the billing page sells.
PACKS = [
    ("Starter pack: 500 credits", "9.99", 500),
    ("Creator pack: 1,200 credits", "19.99", 1200),
    ("Pro pack: 3,000 credits", "44.99", 3000),
    ("Studio pack: 10,000 credits", "129.00", 10_000),
    ("Enterprise top-up: 50,000 credits", "599.00", 50_000),
]
# Which pack a user buys: most users the small ones, the busiest the big ones.
BODY_PACK_WEIGHTS = [55, 30, 12, 3, 0]
BUSY_PACK_WEIGHTS = [0, 0, 10, 50, 40]

# (description, credits spent, relative frequency, seconds a generation takes: min, max, the model that does it,
# which the generation service sends as the usage's metadata: pixel-xl 43%, pixel-lite 27%, quill 26%, echo and reel 3%)
USAGE = [
    ("Image generation (1024x1024)", 4, 30, 5, 20, "pixel-xl"),
    ("Image generation (512x512)", 2, 12, 3, 10, "pixel-lite"),
    ("Image generation, 4 variations (1024x1024)", 16, 8, 10, 40, "pixel-xl"),
    ("Text generation, 4k tokens", 1, 20, 1, 8, "quill"),
    ("Text generation, 32k tokens", 6, 6, 5, 30, "quill"),
    ("Upscale 2x", 3, 6, 2, 10, "pixel-lite"),
    ("Upscale 4x", 8, 5, 4, 20, "pixel-lite"),
    ("Image edit (inpainting)", 5, 5, 5, 20, "pixel-xl"),
    ("Background removal", 1, 4, 1, 4, "pixel-lite"),
    ("Voice synthesis, 30 s", 5, 3, 3, 15, "echo"),
    ("Video generation, 5 s", 35, 2, 30, 120, "reel"),
    ("Video generation, 10 s", 70, 1, 60, 240, "reel"),
]
# How a busy user's activity is spread over their window: the density grows as t**(1/BUSY_SPREAD - 1),
# linearly for 0.5 (a customer whose use grew), so that their last 30 days hold about twice the share a
# uniform spread would give them (8% of two years' rows rather than 4%). 1 is uniform, the others' spread.
BUSY_SPREAD = 0.5

# How often things go wrong or are still open.
FAILED_PURCHASE = 0.03  # card declined
PENDING_PURCHASE_RECENT = 0.25  # of purchases in the last day: checkout not settled yet
FAILED_USAGE = 0.02  # the generation failed and its hold was released
CRASHED_USAGE = 0.001  # the generation service died; the expiry job released the hold
PENDING_USAGE_RECENT = 0.5  # of usage younger than the pending window: generation still running
HELD_USAGE = 0.7  # usage reserved first (hold, then settle) rather than charged at once
EARLY_REFILL = 0.3  # chance a user running low buys before running out

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_ROW_START = struct.Struct(">hi16si16s")  # field count, then id and user_id as length-prefixed uuids
_INT4 = struct.Struct(">ii")
_TIMESTAMP = struct.Struct(">iq")
_TWO_TIMESTAMPS = struct.Struct(">iqiq")
TRANSACTION_COLUMNS = (
    "id, user_id, type, amount, credits, description, status, created_at, updated_at, hold_expires_at, failure_reason,"
    " metadata, reference"
)
_FIELDS = len(TRANSACTION_COLUMNS.split(","))  # a row's field count, in binary COPY


def _field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _numeric(dollars: str) -> bytes:
    """A non-negative amount with two decimals in PostgreSQL's binary numeric format (base-10000 digits)."""
    cents = int(Decimal(dollars) * 100)
    whole, fraction = divmod(cents, 100)
    groups = []
    while whole:
        whole, group = divmod(whole, 10_000)
        groups.insert(0, group)
    weight = len(groups) - 1 if groups else -1
    digits = groups + [fraction * 100]
    while digits and digits[-1] == 0:
        digits.pop()
    if not digits:
        weight = 0
    return _field(struct.pack(f">hhhh{len(digits)}h", len(digits), weight, 0, 2, *digits))


_PURCHASE, _USAGE = _field(b"purchase"), _field(b"usage")
_COMPLETED, _PENDING, _FAILED = _field(b"completed"), _field(b"pending"), _field(b"failed")
_ZERO_DOLLARS = _numeric("0.00")
_HOLD_EXPIRED_FIELD = _field(HOLD_EXPIRED.encode())
_NO_METADATA = _field(b"{}")  # json's binary form is its text


def _metadata(model: str) -> bytes:
    return _field(f'{{"model": "{model}"}}'.encode())


@dataclass(frozen=True)
class NamedUser:
    """A user the caller asks for by id, with an exact number of rows (e.g. the benchmark's 200,000-row user)."""

    user_id: uuid.UUID
    rows: int
    busy: bool


@dataclass
class Population:
    """Who the history is about: one entry per user, as parallel lists (cheap to index in the hot loop)."""

    ids: list[bytes] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    joined: list[int] = field(default_factory=list)
    active_until: list[int] = field(default_factory=list)
    pack: list[int] = field(default_factory=list)
    in_progress: list[bool] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)  # BUSY_SPREAD for a busy user, else 1 (uniform)

    def add(self, user_id: bytes, rows: int, joined: int, active_until: int, pack: int, spread: float = 1.0) -> None:
        self.ids.append(user_id)
        self.rows.append(rows)
        self.joined.append(joined)
        self.active_until.append(active_until)
        self.pack.append(pack)
        self.in_progress.append(False)
        self.spread.append(spread)


def row_counts(rng: random.Random, users: int, rows: int) -> list[int]:
    """A long tail: a few "whales" share 30% of the rows (Zipf), the rest a log-normal around a few dozen."""
    if users == 0:
        return []
    whales = min(5, users // 2000)
    harmonic = sum(1 / rank for rank in range(1, whales + 1))
    counts = [int(rows * 0.3 / (rank * harmonic)) for rank in range(1, whales + 1)]
    rest = rows - sum(counts)
    weights = [rng.lognormvariate(0.0, 1.1) for _ in range(users - whales)]
    scale = rest / sum(weights)
    body = [int(weight * scale) for weight in weights]
    for index in range(rest - sum(body)):  # the rounding remainder, one row at a time
        body[index % len(body)] += 1
    return counts + body


def plan_population(
    rng: random.Random, users: int, transactions: int, named: list[NamedUser], now: int, pending_window: int
) -> Population:
    """Row counts, active windows and preferred packs; ``users`` and ``transactions`` include the named users."""
    start = now - HISTORY_SPAN
    population = Population()
    for user in named:
        joined = start + int(rng.random() * (30 * DAY if user.busy else HISTORY_SPAN // 2))
        weights = BUSY_PACK_WEIGHTS if user.busy else BODY_PACK_WEIGHTS
        population.add(user.user_id.bytes, user.rows, joined, now, rng.choices(range(len(PACKS)), weights)[0],
                       BUSY_SPREAD if user.busy else 1.0)
    counts = row_counts(rng, users - len(named), transactions - sum(user.rows for user in named))
    for count in counts:
        busy = count > 5_000
        if busy:
            joined = start + int(rng.random() * 180 * DAY)
        else:
            joined = start + int(HISTORY_SPAN * rng.random() ** 0.5)  # the product grew: more users joined lately
        # Most users are still active; the others stopped somewhere in their window.
        active_until = now if busy or rng.random() < 0.7 else joined + int((now - joined) * rng.random())
        weights = BUSY_PACK_WEIGHTS if busy else BODY_PACK_WEIGHTS
        population.add(uuid.UUID(int=rng.getrandbits(128), version=4).bytes, count, joined, active_until,
                       rng.choices(range(len(PACKS)), weights)[0], BUSY_SPREAD if busy else 1.0)
    # A few generations and checkouts in progress right now: these users' last event is recent and pending.
    candidates = [index for index in range(len(named), len(population.ids))
                  if population.rows[index] >= 2 and population.joined[index] < now - pending_window - DAY]
    for index in rng.sample(candidates, min(len(candidates), max(3, users // 200))):
        population.in_progress[index] = True
        population.active_until[index] = now - pending_window
    return population


def history(
    population: Population,
    rng: random.Random,
    now: int,
    hold_ttl: int,
    pending_window: int,
    totals: dict[str, Any],
    chunk_rows: int = 4096,
) -> Iterator[bytes]:
    """The ledger rows, oldest first, in binary COPY format, a chunk of ``chunk_rows`` rows at a time.

    Keeps ``totals["rows"]``, the rows written so far, for progress.
    """
    rand = rng.random
    getrandbits = rng.getrandbits
    heappush, heapreplace, heappop = heapq.heappush, heapq.heapreplace, heapq.heappop
    row_start, int4, two_timestamps, timestamp = (
        _ROW_START.pack, _INT4.pack, _TWO_TIMESTAMPS.pack, _TIMESTAMP.pack
    )
    usage_table = []
    for description, credits, weight, shortest, longest, model in USAGE:
        entry = (credits, _field(description.encode()), shortest * SECOND, (longest - shortest) * SECOND,
                 _metadata(model))
        usage_table += [entry] * weight
    usage_choices = len(usage_table)
    packs = [(credits, _numeric(price), _field(description.encode())) for description, price, credits in PACKS]

    ids = population.ids
    remaining = list(population.rows)
    joined, active_until = population.joined, population.active_until
    in_progress, spread = population.in_progress, population.spread
    # Where each user is in their window, as the fraction of it a uniform spread would have reached.
    position = [0.0] * len(ids)
    user_pack = [packs[index] for index in population.pack]
    refill_below = [credits * 0.3 * rand() for credits, _, _ in user_pack]
    # What each simulated user knows of their own credits, to decide when to buy and what to spend.
    balance = [0] * len(ids)
    held = [0] * len(ids)
    recent_purchase, pending_usage_after = now - DAY, now - pending_window
    crash_settled_before = now - hold_ttl - 300 * SECOND

    def next_time(user: int, previous: int) -> int:
        # The next of n sorted uniform fractions of the window: order statistics, one at a time; mapped
        # through fraction ** spread (increasing), so the times stay sorted and their density grows.
        left = remaining[user] - in_progress[user]
        if left <= 0:  # the in-progress user's last event: recent
            return max(previous, now - 1 - int(rand() * (pending_window - SECOND)))
        start, reached = joined[user], position[user]
        reached += (1.0 - reached) * (1.0 - rand() ** (1.0 / left))
        position[user] = reached
        shape = spread[user]
        fraction = reached if shape == 1.0 else reached ** shape
        return max(previous, start + int((active_until[user] - start) * fraction))

    heap: list[tuple[int, int]] = []
    for user, user_joined in enumerate(joined):
        if remaining[user]:
            heappush(heap, (next_time(user, user_joined), user))

    out: list[bytes] = [_COPY_HEADER]
    written = 0
    while heap:
        created, user = heap[0]
        last_event = remaining[user] == 1
        forced_pending = last_event and in_progress[user]
        usage_credits, usage_description, shortest, duration, usage_metadata = usage_table[int(rand() * usage_choices)]
        available = balance[user] - held[user]
        ms, micros = divmod(created, 1000)
        # UUIDv7 from created_at: milliseconds, then the sub-millisecond fraction in the 12 "rand_a" bits
        # (RFC 9562 method 3), so ids sort exactly as created_at does.
        transaction_id = (
            (ms << 80) | (0x7 << 76) | ((micros * 4096 // 1000) << 64) | (0b10 << 62) | getrandbits(62)
        ).to_bytes(16, "big")
        if available < usage_credits or (available < refill_below[user] and rand() < EARLY_REFILL):
            credits, amount, description = user_pack[user]
            if forced_pending or (created > recent_purchase and rand() < PENDING_PURCHASE_RECENT):
                status, updated = _PENDING, created
            elif rand() < FAILED_PURCHASE:
                status, updated = _FAILED, created + int((5 + 55 * rand()) * SECOND)
            else:
                status = _COMPLETED
                updated = created if rand() < 0.2 else created + int((2 + 28 * rand()) * SECOND)
                balance[user] += credits
            # The payment service's checkout id, as the purchase's reference: unique, as the id is.
            reference = _field(b"cs_" + transaction_id.hex().encode())
            out += (row_start(_FIELDS, 16, transaction_id, 16, ids[user]), _PURCHASE, amount, int4(4, credits),
                    description, status, two_timestamps(8, created - PG_EPOCH, 8, min(updated, now) - PG_EPOCH), _NULL,
                    _NULL, _NO_METADATA, reference)
        else:
            reason = _NULL
            hold = _NULL
            if forced_pending or (created > pending_usage_after and rand() < PENDING_USAGE_RECENT):
                status, updated = _PENDING, created
                hold = timestamp(8, created + hold_ttl - PG_EPOCH)
                held[user] += usage_credits
            else:
                updated = min(created + shortest + int(duration * rand()), now)
                luck = rand()
                if rand() < HELD_USAGE or luck < FAILED_USAGE:
                    hold = timestamp(8, created + hold_ttl - PG_EPOCH)
                if luck < CRASHED_USAGE and created < crash_settled_before:
                    status, reason = _FAILED, _HOLD_EXPIRED_FIELD
                    hold = timestamp(8, created + hold_ttl - PG_EPOCH)
                    updated = created + hold_ttl + int(300 * SECOND * rand())  # the expiry job runs every 5 minutes
                elif luck < FAILED_USAGE:
                    status = _FAILED
                else:
                    status = _COMPLETED
                    balance[user] -= usage_credits
            out += (row_start(_FIELDS, 16, transaction_id, 16, ids[user]), _USAGE, _ZERO_DOLLARS,
                    int4(4, -usage_credits), usage_description, status,
                    two_timestamps(8, created - PG_EPOCH, 8, updated - PG_EPOCH), hold, reason, usage_metadata, _NULL)
        remaining[user] -= 1
        if remaining[user]:
            heapreplace(heap, (next_time(user, created), user))
        else:
            heappop(heap)
        written += 1
        if written % chunk_rows == 0:
            totals["rows"] = written
            yield b"".join(out)
            out = []
    out.append(_COPY_TRAILER)
    totals["rows"] = written
    yield b"".join(out)


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, for ``copy_expert`` (which only calls ``read``)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            try:
                self._current = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


def stream(chunks: Iterable[bytes], buffer_size: int = 1 << 20) -> io.BufferedReader:
    return io.BufferedReader(ChunkReader(chunks), buffer_size=buffer_size)


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, total: int, label: str, width: int = 30) -> None:
        self.total, self.label, self.width = max(total, 1), label, width
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._tty = sys.stderr.isatty()
        self._tenths = -1

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        fraction = min(done / self.total, 1.0)
        if self._tty:
            if not final and now - self._drawn_at < 0.2:
                return
            self._drawn_at = now
        elif int(fraction * 10) == self._tenths and not final:
            return
        self._tenths = int(fraction * 10)
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f"{(self.total - done) / rate:4.0f} s left" if rate and not final else "done"
        filled = int(fraction * self.width)
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%} "
                f"{done:,}/{self.total:,} rows  {elapsed:5.1f} s  {rate:,.0f} rows/s  {left}")
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self._tty else line + "\n")
        sys.stderr.flush()


def _copy_binary(cursor: Any, table: str, columns: str, rows: Iterable[bytes]) -> None:
    def chunks() -> Iterator[bytes]:
        yield _COPY_HEADER
        yield from rows
        yield _COPY_TRAILER

    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT binary)", stream(chunks()), size=1 << 20)


def _user_rows(population: Population, now: int) -> Iterator[bytes]:
    pack = struct.Struct(">hi16siq").pack
    for user_id, joined in zip(population.ids, population.joined):
        yield pack(2, 16, user_id, 8, min(joined, now) - PG_EPOCH)


# The loaded rows' metadata pairs, into the index a filtered history reads (one row per transaction and key),
# as each write adds its own (store._LABELLED).
_LABEL_LOADED = (
    "INSERT INTO transaction_metadata (transaction_id, key, user_id, value, created_at)"
    " SELECT t.id, m.key, t.user_id, m.value, t.created_at FROM user_transactions AS t, json_each_text(t.metadata) AS m"
    " WHERE t.user_id = ANY(%(users)s::uuid[])"
)


def _fill_rollup() -> str:
    """Migration 0011's statement filling usage_rollup from the ledger, for psycopg2: the rule has one home.

    Its rows go in in period order, as the writes would have added them over time (the table's physical
    order is what a summary's range reads). It reads the whole ledger; rows already there (users the
    seed did not add, whose writes kept them) stay.
    """
    path = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0011_books_and_rollup.py"
    spec = importlib.util.spec_from_file_location("books_and_rollup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    statement = str(text(module._FILL_ROLLUP).compile(dialect=postgresql.psycopg2.dialect()))
    return statement.rstrip() + "\nORDER BY period\nON CONFLICT (user_id, key, grain, period, value) DO NOTHING"


def _connect() -> Any:
    """A connection of the seed's own, without the service's statement timeout: COPY runs for many seconds.

    Behind PgBouncer (``DATABASE_CONNECT_OPTIONS=false``) each transaction lifts the timeout with
    ``SET LOCAL`` instead, and the closing VACUUM keeps the role's: seed a large history directly.
    """
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    if current_app.config.get("DATABASE_CONNECT_OPTIONS", True):
        return psycopg2.connect(url, options="-c statement_timeout=0")
    return psycopg2.connect(url)


# (what must hold, SQL counting the rows that break it)
INVARIANTS = [
    (
        "no balance, held or available credits below zero",
        "SELECT count(*) FROM user_balances WHERE balance < 0 OR held < 0 OR balance - held < 0",
    ),
    (
        "balance = sum of completed credits and held = credits of pending usage, for every user",
        """
        WITH ledger AS (
            SELECT user_id,
                   sum(credits) FILTER (WHERE status = 'completed') AS balance,
                   sum(-credits) FILTER (WHERE status = 'pending' AND type = 'usage') AS held
            FROM user_transactions GROUP BY user_id
        )
        SELECT count(*) FROM ledger FULL JOIN user_balances b USING (user_id)
        WHERE coalesce(ledger.balance, 0) <> coalesce(b.balance, 0) OR coalesce(ledger.held, 0) <> coalesce(b.held, 0)
        """,
    ),
    (
        "no user ever spent credits they did not have (running sum of completed credits, in time order)",
        """
        SELECT count(*) FROM (
            SELECT sum(credits) OVER (PARTITION BY user_id ORDER BY created_at, id) AS running
            FROM user_transactions WHERE status = 'completed'
        ) AS steps WHERE running < 0
        """,
    ),
    ("updated_at >= created_at on every row", "SELECT count(*) FROM user_transactions WHERE updated_at < created_at"),
    (
        "every pending usage holds until a future hold_expires_at",
        "SELECT count(*) FROM user_transactions WHERE status = 'pending' AND type = 'usage' "
        "AND (hold_expires_at IS NULL OR hold_expires_at <= now())",
    ),
    (
        "holds released by expiry lapsed before they were failed",
        "SELECT count(*) FROM user_transactions WHERE failure_reason = 'hold_expired' "
        "AND (status <> 'failed' OR hold_expires_at > updated_at)",
    ),
    (
        "no lot below zero, and none holding more than it was given",
        "SELECT count(*) FROM credit_lots WHERE remaining < 0 OR held < 0 OR remaining + held > credits",
    ),
    (
        # Over every lot, lapsed or not: a lapsed lot's credits leave the balance row only when its
        # expiry is recorded (store._EXPIRE_LOTS); reads discount them before that (store._BALANCE).
        "balance = the lots' remaining + held and held = the lots' held, for every user",
        """
        WITH lots AS (SELECT user_id, sum(remaining + held) AS balance, sum(held) AS held FROM credit_lots GROUP BY user_id)
        SELECT count(*) FROM lots FULL JOIN user_balances b USING (user_id)
        WHERE coalesce(lots.balance, 0) <> coalesce(b.balance, 0) OR coalesce(lots.held, 0) <> coalesce(b.held, 0)
        """,
    ),
    (
        "every lot's remaining + held = its postings' credits and its held = their held",
        """
        WITH posted AS (SELECT lot_id, sum(credits) AS credits, sum(held) AS held FROM lot_postings GROUP BY lot_id)
        SELECT count(*) FROM credit_lots AS l LEFT JOIN posted ON posted.lot_id = l.id
        WHERE coalesce(posted.credits, 0) <> l.remaining + l.held OR coalesce(posted.held, 0) <> l.held
        """,
    ),
    (
        "every metadata pair of a row is in the metadata index, with its user and time, and nothing else is",
        """
        SELECT count(*) FROM (
            SELECT t.id, m.key, t.user_id, m.value, t.created_at
            FROM user_transactions AS t, json_each_text(t.metadata) AS m
        ) AS pairs (transaction_id, key, user_id, value, created_at)
        FULL JOIN transaction_metadata AS i USING (transaction_id, key)
        WHERE pairs.value IS DISTINCT FROM i.value OR pairs.user_id IS DISTINCT FROM i.user_id
           OR pairs.created_at IS DISTINCT FROM i.created_at
        """,
    ),
    (
        "every posting is on a lot of its own user",
        "SELECT count(*) FROM lot_postings AS p JOIN credit_lots AS l ON l.id = p.lot_id WHERE p.user_id <> l.user_id",
    ),
    (
        "no credit was taken from a lot (spent or held) at or after the lot expired",
        """
        SELECT count(*) FROM lot_postings AS p JOIN credit_lots AS l ON l.id = p.lot_id
        JOIN user_transactions AS t ON t.id = p.transaction_id
        WHERE t.type = 'usage' AND (p.held > 0 OR (p.credits < 0 AND p.held = 0)) AND p.created_at >= l.expires_at
        """,
    ),
]
# Properties of the seeded rows, not of the ledger: the service's own ids sort by created_at only to the
# millisecond (random bits below), and rows written later by other code may interleave; and pgbench's
# spends (bench/run.py, scenario A) write the ledger's rows without the rollup the service keeps.
SEEDED = [
    (
        "seeded ids sort as created_at does (UUIDv7 with sub-millisecond time)",
        """
        SELECT count(*) FROM (
            SELECT created_at < lag(created_at) OVER (ORDER BY id) AS out_of_order FROM user_transactions
        ) AS ordered WHERE out_of_order
        """,
    ),
    (
        "the usage rollup's credits, in total and per grouped metadata value, are the ledger's, in each grain",
        """
        WITH spent AS (
            SELECT t.user_id, '' AS key, '' AS value, -t.credits AS credits FROM user_transactions AS t
            WHERE (t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal'
            UNION ALL
            SELECT t.user_id, m.key, m.value, -t.credits FROM user_transactions AS t
            JOIN transaction_metadata AS m ON m.transaction_id = coalesce(t.reverses, t.id)
            WHERE ((t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal') AND m.key = ANY(%(keys)s)
        ),
        ledger AS (SELECT user_id, key, value, sum(credits) AS credits FROM spent GROUP BY 1, 2, 3),
        rollup AS (SELECT grain, user_id, key, value, sum(credits) AS credits FROM usage_rollup GROUP BY 1, 2, 3, 4),
        grains AS (SELECT * FROM (VALUES (15), (60), (360), (1440)) AS g (grain))
        SELECT count(*) FROM (ledger CROSS JOIN grains) FULL JOIN rollup USING (grain, user_id, key, value)
        WHERE coalesce(ledger.credits, 0) <> coalesce(rollup.credits, 0)
        """,
    ),
]


def check_invariants(connection: Any, *, seeded: bool = False) -> list[tuple[str, int]]:
    """Each invariant with the number of rows (or users) breaking it: all zeros when the ledger is sound.

    ``seeded`` adds the checks of a freshly seeded ledger (SEEDED), in the app's context (USAGE_GROUP_KEYS).
    """
    params = {"keys": list(current_app.config["USAGE_GROUP_KEYS"])} if seeded else None
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '256MB'")  # the window checks sort every row
        cursor.execute("SET LOCAL statement_timeout = 0")
        results = []
        for description, sql in INVARIANTS + (SEEDED if seeded else []):
            cursor.execute(sql, params)
            results.append((description, cursor.fetchone()[0]))
    connection.rollback()
    return results


def report_invariants(connection: Any, *, seeded: bool) -> bool:
    started = time.monotonic()
    results = check_invariants(connection, seeded=seeded)
    click.echo(f"invariants ({time.monotonic() - started:.1f} s):")
    for description, broken in results:
        click.echo(f"  {'ok  ' if broken == 0 else 'FAIL'}  {description}" + (f": {broken:,} broken" if broken else ""))
    return all(broken == 0 for _, broken in results)


def _summary(connection: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT type, status, count(*) FROM user_transactions GROUP BY 1, 2 ORDER BY 1, 2"
        )
        mix = ", ".join(f"{kind} {status} {count:,}" for kind, status, count in cursor.fetchall())
        cursor.execute(
            "SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY n), max(n) FROM "
            "(SELECT count(t.id) AS n FROM users u LEFT JOIN user_transactions t ON t.user_id = u.id GROUP BY u.id) s"
        )
        users, median, largest = cursor.fetchone()
        cursor.execute("SELECT min(created_at), max(created_at) FROM user_transactions")
        first, last = cursor.fetchone()
    connection.rollback()
    click.echo(f"users: {users:,} (median {median} rows, largest {largest:,}); rows: {mix}")
    click.echo(f"created_at from {first:%Y-%m-%d} to {last:%Y-%m-%d %H:%M}")


@dataclass(frozen=True)
class SeedResult:
    rows: int
    users: int
    load_seconds: float
    vacuum_seconds: float


def seed(
    users: int,
    transactions: int,
    named: list[NamedUser],
    *,
    random_seed: int,
    progress: Callable[[int, bool], None] | None = None,
) -> SeedResult:
    """Load the history in one transaction, then VACUUM ANALYZE so the planner and visibility map are current."""
    now = time.time_ns() // 1000
    hold_ttl = current_app.config["HOLD_TTL_SECONDS"] * SECOND
    pending_window = min(hold_ttl // 2, 30 * 60 * SECOND)
    rng = random.Random(random_seed)
    population = plan_population(rng, users, transactions, named, now, pending_window)
    totals: dict[str, Any] = {"rows": 0}
    started = time.monotonic()
    connection = _connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("SET LOCAL work_mem = '256MB'")  # the rollup's fill groups every usage row
            cursor.execute("SELECT id FROM users WHERE id = ANY(%s::uuid[])", ([str(user.user_id) for user in named],))
            taken = [row[0] for row in cursor.fetchall()]
            if taken:
                raise click.ClickException(f"users already exist: {', '.join(taken)}")
            _copy_binary(cursor, "users", "id, created_at", _user_rows(population, now))

            def rows_with_progress() -> Iterator[bytes]:
                for chunk in history(population, rng, now, hold_ttl, pending_window, totals):
                    yield chunk
                    if progress is not None:
                        progress(totals["rows"], False)

            cursor.copy_expert(
                f"COPY user_transactions ({TRANSACTION_COLUMNS}) FROM STDIN WITH (FORMAT binary)",
                stream(rows_with_progress()),
                size=1 << 20,
            )
            user_ids = [str(uuid.UUID(bytes=user_id)) for user_id in population.ids]
            cursor.execute(_LABEL_LOADED, {"users": user_ids})
            cursor.execute(_fill_rollup(), {"keys": list(current_app.config["USAGE_GROUP_KEYS"])})
            store.open_balances(cursor, user_ids)
        connection.commit()
        if progress is not None:
            progress(totals["rows"], True)
        loaded = time.monotonic()
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) users, user_transactions, transaction_metadata, usage_rollup, user_balances,"
                           " credit_lots, lot_postings")
        return SeedResult(totals["rows"], len(population.ids), loaded - started, time.monotonic() - loaded)
    finally:
        connection.close()


@click.command("seed")
@click.option("--users", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Users in total, the named ones included.")
@click.option("--transactions", type=click.IntRange(min=0), default=1_000_000, show_default=True,
              help="Ledger rows in total, the named users' included.")
@click.option("--heavy-user", type=click.UUID, help="A user to give exactly --heavy-rows rows (a busy, long history).")
@click.option("--heavy-rows", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option("--light-user", type=click.UUID, help="A user to give exactly --light-rows rows.")
@click.option("--light-rows", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", "random_seed", type=int, default=1, show_default=True, help="Random seed: same seed, same history.")
@click.option("--check", "check_only", is_flag=True, help="Seed nothing: only check the ledger's invariants.")
def main(
    users: int,
    transactions: int,
    heavy_user: uuid.UUID | None,
    heavy_rows: int,
    light_user: uuid.UUID | None,
    light_rows: int,
    random_seed: int,
    check_only: bool,
) -> None:
    """Add a realistic two-year history (new users only) to DATABASE_URL, then check the ledger's invariants.

    With --check, only check them (exit status 1 when one is broken).
    """
    with create_app().app_context():
        if check_only:
            report(seeded=False)
            return
        named = _named_users(users, transactions, heavy_user, heavy_rows, light_user, light_rows)
        bar = Progress(transactions, "seeding")
        result = seed(users, transactions, named, random_seed=random_seed,
                      progress=lambda done, final: bar.update(done, final=final))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        click.echo(
            f"loaded {result.rows:,} transactions for {result.users:,} users in {result.load_seconds:.1f} s "
            f"({result.rows / max(result.load_seconds, 1e-9):,.0f} rows/s), VACUUM ANALYZE "
            f"{result.vacuum_seconds:.1f} s, peak RSS of this process {peak_mb:.0f} MB"
        )
        report(seeded=True)


def _named_users(
    users: int, transactions: int, heavy_user: uuid.UUID | None, heavy_rows: int,
    light_user: uuid.UUID | None, light_rows: int,
) -> list[NamedUser]:
    named = []
    if heavy_user is not None:
        named.append(NamedUser(heavy_user, heavy_rows, busy=True))
    if light_user is not None:
        named.append(NamedUser(light_user, light_rows, busy=False))
    if len({user.user_id for user in named}) < len(named):
        raise click.UsageError("--heavy-user and --light-user must differ")
    if users < len(named) or transactions < sum(user.rows for user in named):
        raise click.UsageError("--users and --transactions are totals: they must cover the named users and their rows")
    if transactions > sum(user.rows for user in named) and users == len(named):
        raise click.UsageError("rows left over for other users, but --users leaves no other user")
    return named


def report(*, seeded: bool) -> None:
    """Print what the ledger holds and whether its invariants hold."""
    connection = _connect()
    try:
        _summary(connection)
        sound = report_invariants(connection, seeded=seeded)
    finally:
        connection.close()
    if not sound:
        raise click.ClickException("the ledger's invariants do not hold")


if __name__ == "__main__":
    main()
