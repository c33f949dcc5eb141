"""Our webhook queue against procrastinate and pgqueuer: ``make bench-queues`` (ADR 0006, decision 10).

One throwaway embedded PostgreSQL (``bench.run.database``: production
durability), migrated to the service's schema, with procrastinate's and
pgqueuer's own schemas installed beside it. Each queue is measured three ways:

1. **throughput**: ``--jobs`` queued jobs drained by one worker at
   concurrency 8 whose handler does nothing, ``--rounds`` times, the queues'
   order alternating. Ours is the real ``Worker``, with only the HTTP post
   taken out, from feed events (copies of one a real purchase wrote) to
   attempts recorded: its whole path, the fan-out into deliveries included,
   since that is where ours does what a library's enqueue does on the write;
   at 8 senders, and again at its own default number.
   procrastinate runs ``run_worker_async(concurrency=8, wait=False)``,
   pgqueuer ``QueueManager.run`` in drain mode with
   ``max_concurrent_tasks=8`` (and so ``batch_size=4``, the most that cap
   allows); each on its default driver (psycopg 3, asyncpg).
2. **wake-up latency**: an idle worker, ``--wakes`` jobs enqueued one at a
   time 50 ms apart, timed from the enqueue's commit (its statement
   returned) to the handler starting. Ours enqueues as the ledger does, by
   committing a feed event, and is measured three ways: woken by its
   ``LISTEN`` (migration 0009's trigger notifies while it waits: the
   default), polling only at ``WEBHOOK_POLL_SECONDS`` (a worker behind a
   transaction pooler with no ``DATABASE_DIRECT_URL``), and polling only
   every 0.2 s (decision 10's design before the ``LISTEN`` wake-up).
3. **the enqueue's cost on the write**: pgbench, 8 connections, ``--seconds``
   per slice, the variants alternating over ``--rounds``. The write is a
   single-row insert of a ledger event (``ledger_events``, the row a ledger
   statement adds): alone, as ours needs nothing more (the fan-out reads the
   feed later; migration 0009's trigger looks up whether a worker waits);
   alone with a worker waiting, so that every commit notifies (ours at its
   worst); in a transaction with a no-op statement where an enqueue would go
   (the round trips an enqueue adds, without one); the same with a
   ``NOTIFY`` there (a notifying commit, without a library); and with
   procrastinate's and pgqueuer's own enqueue statements there, taken from
   the installed libraries (their inserts, and the triggers that ``NOTIFY``
   their workers at commit).

A table, then one JSON line, also written to ``bench/results/<UTC time>-queues.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import psycopg2
from sqlalchemy.engine import make_url

try:
    import asyncpg
    import procrastinate
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.adapters.persistence.qb import QueryQueueBuilder
    from pgqueuer.types import QueueExecutionMode
    from procrastinate.sql import queries as procrastinate_queries
except ImportError as missing:
    raise SystemExit(f"{missing.name} is not installed: `make bench-queues` installs procrastinate, pgqueuer,"
                     " psycopg 3 and asyncpg into .venv") from missing

from bench.openloop import percentile
from bench.run import (
    FLASK,
    PROFILES,
    REPO,
    Conditions,
    Load,
    database,
    git_commit,
    loadavg,
    log,
    machine,
    postmaster_pid,
    publish,
    throughput,
)
from transactions_service import api_keys, create_app
from transactions_service.extensions import db
from transactions_service.scopes import MANAGE_WEBHOOKS, WRITE_PURCHASES, WRITE_USERS
from transactions_service.webhooks import store
from transactions_service.webhooks import worker as worker_module
from transactions_service.webhooks.worker import Worker, WorkerSettings

CONCURRENCY = 8
FORMER_POLL_SECONDS = 0.2  # the idle worker's poll before it woke on LISTEN (decision 10 as first written)
WAKE_SPACING_SECONDS = 0.05
IDLE_BEFORE_SECONDS = 1.5  # a worker settles into its idle wait before the first wake-up job
DRAIN_WATCH_SECONDS = 0.02  # how often a drain of ours looks whether every attempt is recorded
NOTIFY_CHANNEL = "bench_queues"  # for the notifying commit without a library; nobody listens
# How long a worker is taken to wait, so that every write of a slice notifies (store.arm_wake).
WAITING_SECONDS = 3600
# procrastinate's psycopg pool, and at most what our worker opens: its loop and eight delivery threads.
LIBRARY_POOL_SIZE = CONCURRENCY + 2
PROCRASTINATE_QUEUE, TASK = "webhooks", "deliver"
# pgqueuer requires max_concurrent_tasks >= 2 * batch_size.
PGQUEUER_BATCH = CONCURRENCY // 2
ENQUEUE_CHUNK = 1_000
# Never called: the no-op handler sends nothing, but the endpoint must pass the API's checks.
RECEIVER_URL = "http://127.0.0.1:9/hooks"
# The arguments of a delivery job, as a library would carry them (the same for both).
JOB_ARGS = {"endpoint_id": "6f1c0000-0000-4000-8000-000000000001", "event_id": "6f1c0000-0000-4000-8000-000000000002"}

# Copies of the template event (a real purchase's), as the ledger's statements insert them.
_COPY_EVENTS = (
    "INSERT INTO ledger_events (type, user_id, sequence, data, created_at)"
    " SELECT type, user_id, sequence, data, now() FROM ledger_events, generate_series(1, %(count)s)"
    " WHERE position = %(template)s RETURNING id::text"
)
_PENDING = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
# Every event is of the one type the one endpoint takes: one delivery each.
_UNDELIVERED = (
    "SELECT (SELECT count(*) FROM ledger_events) - (SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered')"
)


def connect(dsn: str) -> Any:
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    return connection


def query(dsn: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    connection = connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


class Handled:
    """When each job's handler started; ``done`` once ``expected`` jobs' have."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.starts: dict[Any, float] = {}
        self.repeats = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def started(self, job: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if job in self.starts:
                self.repeats += 1
            else:
                self.starts[job] = now
            if len(self.starts) >= self.expected:
                self.done.set()

    def latencies_ms(self, committed: dict[Any, float]) -> list[float]:
        """From each job's commit to its handler's start."""
        return [(self.starts[job] - at) * 1000 for job, at in committed.items() if job in self.starts]


async def all_handled(handled: Handled, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not handled.done.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(handled.starts)} of {handled.expected} jobs handled in {timeout:g} s")
        await asyncio.sleep(0.005)


class Drained(NamedTuple):
    jobs: int
    seconds: float
    handled: int
    repeats: int
    left: int  # jobs still queued afterwards, by the queue's own tables


class Woken(NamedTuple):
    latencies_ms: list[float]
    jobs: int
    repeats: int


# --- ours: the service's worker and statements -------------------------------------------------------------


def silent_delivery(handled: Handled) -> Callable[..., store.Outcome]:
    """In place of the worker's ``_outcome`` (the signed POST): nothing sent, and every delivery a success."""

    def outcome(claimed: store.Claimed, _settings: WorkerSettings, _client: Any) -> store.Outcome:
        handled.started(claimed.event_id)
        return store.Outcome(datetime.now(timezone.utc), 200, None, 0, "delivered", None)

    return outcome


class Ours:
    """The service's queue: feed events from the ledger, fanned out into deliveries, drained by its worker.

    The worker is ``Worker`` as configured by default (``LISTEN`` on the
    server itself, ``WEBHOOK_POLL_SECONDS``) but for its 8 senders, the
    libraries' concurrency (``defaults`` keeps its own number), with
    everything its own but the POST (``silent_delivery``). A job is enqueued
    as the ledger enqueues one: by committing a feed event (a copy of one a
    real purchase wrote through the API, for an endpoint subscribed to its
    type).
    """

    def __init__(self, url: str, dsn: str) -> None:
        self.dsn = dsn
        self.app = create_app({"DATABASE_URL": url, "JWT_SECRET_KEY": os.urandom(32).hex(), "RATELIMIT_ENABLED": False,
                               "LOG_LEVEL": "WARNING", "WEBHOOK_ALLOW_HTTP": True,
                               "WEBHOOK_ALLOW_PRIVATE_NETWORKS": True})
        self.defaults = WorkerSettings.from_config(self.app.config)
        self.settings = replace(self.defaults, concurrency=CONCURRENCY)
        self.template = self._template_event()

    def _template_event(self) -> int:
        """Through the API: a user, an endpoint taking ``transaction.created``, and a purchase; its event's position."""
        with self.app.app_context():
            key = api_keys.create("bench-queues", [WRITE_USERS, WRITE_PURCHASES, MANAGE_WEBHOOKS]).key
        headers = {"Authorization": f"Bearer {key}"}
        client = self.app.test_client()
        user = str(uuid.uuid4())
        for response in (
            client.put(f"/api/users/{user}", headers=headers),
            client.post("/api/webhook-endpoints", headers=headers,
                        json={"url": RECEIVER_URL, "event_types": ["transaction.created"], "description": "bench"}),
            client.post("/api/transactions", headers=headers,
                        json={"user_id": user, "type": "purchase", "amount": "9.99", "credits": 500,
                              "description": "500 credits"}),
        ):
            if response.status_code not in (200, 201):
                raise RuntimeError(f"{response.request.method} {response.request.path}: {response.status_code}")
        ((position,),) = query(self.dsn, "SELECT min(position) FROM ledger_events")
        return position

    def fill(self, jobs: int) -> float:
        """``jobs`` feed events, committed at once; the seconds that took."""
        started = time.monotonic()
        query(self.dsn, _COPY_EVENTS, {"count": jobs, "template": self.template})
        return time.monotonic() - started

    @contextlib.contextmanager
    def working(self, handled: Handled, settings: WorkerSettings) -> Iterator[None]:
        worker = Worker(self.app, settings)
        with mock.patch.object(worker_module, "_outcome", silent_delivery(handled)):
            thread = threading.Thread(target=worker.run, name="webhook-worker")
            thread.start()
            try:
                yield
            finally:
                worker.stop()
                thread.join(60)
                if thread.is_alive():
                    raise RuntimeError("the webhook worker did not stop")

    def pending(self, connection: Any) -> int:
        with connection.cursor() as cursor:
            cursor.execute(_PENDING)
            return cursor.fetchone()[0]

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """As if a worker waited all along: every write's commit notifies (migration 0009's trigger)."""
        with self.app.app_context():
            until = store.arm_wake(WAITING_SECONDS)
        if until is None:
            raise RuntimeError("no fan-out position to wait on: the worker has not run yet")
        try:
            yield
        finally:
            with self.app.app_context():
                store.disarm_wake(until)

    def drain(self, settings: WorkerSettings | None = None) -> Drained:
        """The worker's whole path: every event not yet delivered fanned out, leased, handled and recorded.

        Done once every handler has started and no delivery is pending any more (watched every
        ``DRAIN_WATCH_SECONDS``), so whenever and however the worker records its attempts.
        """
        ((jobs,),) = query(self.dsn, _UNDELIVERED)
        handled = Handled(jobs)
        timeout = max(120.0, jobs / 50)
        watcher = connect(self.dsn)
        try:
            started = time.monotonic()
            with self.working(handled, settings or self.settings):
                if not handled.done.wait(timeout):
                    raise TimeoutError(f"our worker handled {len(handled.starts)} of {jobs} deliveries")
                while self.pending(watcher):
                    time.sleep(DRAIN_WATCH_SECONDS)
                seconds = time.monotonic() - started
            left = self.pending(watcher)
        finally:
            watcher.close()
        return Drained(jobs, seconds, len(handled.starts), handled.repeats, left)

    def wake(self, jobs: int, listen: bool = True, poll_seconds: float | None = None) -> Woken:
        """Events committed one at a time to the idle worker, woken by its LISTEN or (not ``listen``) by its poll."""
        settings = replace(self.settings, direct_url=self.settings.direct_url if listen else None,
                           poll_seconds=poll_seconds or self.settings.poll_seconds)
        handled = Handled(jobs)
        committed: dict[str, float] = {}
        writer = connect(self.dsn)
        try:
            with self.working(handled, settings), writer.cursor() as cursor:
                time.sleep(IDLE_BEFORE_SECONDS)
                for _ in range(jobs):
                    cursor.execute(_COPY_EVENTS, {"count": 1, "template": self.template})
                    committed[cursor.fetchone()[0]] = time.monotonic()
                    time.sleep(WAKE_SPACING_SECONDS)
                if not handled.done.wait(30):
                    raise TimeoutError(f"our worker handled {len(handled.starts)} of {jobs} wake-up deliveries")
        finally:
            writer.close()
        return Woken(handled.latencies_ms(committed), jobs, handled.repeats)

    def close(self) -> None:
        with self.app.app_context():
            for engine in db.engines.values():
                engine.dispose()


# --- the libraries, each on an event loop of its own that lives as long as it does ---------------------


class Library:
    """An asyncio queue library: its handler records into ``handled``; the calls run on its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.handled = Handled(0)
        self.next_job = 0
        self.filled = 0  # jobs queued by the last fill, for the drain after it

    def handle(self, job: int) -> None:
        self.handled.started(job)

    def numbers(self, jobs: int) -> range:
        """Job numbers never used before in this run, so that every job is told apart."""
        first, self.next_job = self.next_job, self.next_job + jobs
        return range(first, first + jobs)

    async def enqueue_many(self, numbers: range) -> None:
        raise NotImplementedError

    async def enqueue_one(self, number: int) -> None:
        raise NotImplementedError

    async def run_worker(self, *, drain: bool) -> None:
        """Until drained (``drain``), or stopped by ``stop_worker``."""
        raise NotImplementedError

    async def stop_worker(self, running: asyncio.Task) -> None:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    def fill(self, jobs: int) -> float:
        started = time.monotonic()
        numbers = self.numbers(jobs)
        for first in range(numbers.start, numbers.stop, ENQUEUE_CHUNK):
            self.loop.run_until_complete(self.enqueue_many(range(first, min(first + ENQUEUE_CHUNK, numbers.stop))))
        self.filled = jobs
        return time.monotonic() - started

    def drain(self) -> Drained:
        self.handled = Handled(self.filled)
        started = time.monotonic()
        self.loop.run_until_complete(asyncio.wait_for(self.run_worker(drain=True), max(120.0, self.filled / 50)))
        seconds = time.monotonic() - started
        return Drained(self.filled, seconds, len(self.handled.starts), self.handled.repeats, self.queued())

    def wake(self, jobs: int) -> Woken:
        return self.loop.run_until_complete(self._wake(jobs))

    async def _wake(self, jobs: int) -> Woken:
        self.handled = Handled(jobs)
        running = asyncio.create_task(self.run_worker(drain=False))
        committed: dict[int, float] = {}
        try:
            await asyncio.sleep(IDLE_BEFORE_SECONDS)
            for number in self.numbers(jobs):
                await self.enqueue_one(number)
                committed[number] = time.monotonic()
                await asyncio.sleep(WAKE_SPACING_SECONDS)
            await all_handled(self.handled, 30)
        finally:
            await self.stop_worker(running)
        return Woken(self.handled.latencies_ms(committed), jobs, self.handled.repeats)

    def queued(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self.loop.close()


class Procrastinate(Library):
    """procrastinate on its psycopg 3 pool; its worker at concurrency 8, with its defaults otherwise
    (LISTEN/NOTIFY on, polling every 5 s besides, jobs kept when done)."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=LIBRARY_POOL_SIZE, max_size=LIBRARY_POOL_SIZE))

        @self.app.task(name=TASK, queue=PROCRASTINATE_QUEUE)
        async def deliver(n: int) -> None:
            self.handle(n)

        self.task = deliver
        self.loop.run_until_complete(self.app.open_async())
        self.loop.run_until_complete(self.app.schema_manager.apply_schema_async())

    async def enqueue_many(self, numbers: range) -> None:
        await self.task.batch_defer_async(*({"n": n} for n in numbers))

    async def enqueue_one(self, number: int) -> None:
        await self.task.defer_async(n=number)

    async def run_worker(self, *, drain: bool) -> None:
        # Run as a task, the worker stops when cancelled (stop_worker), after the jobs it holds.
        await self.app.run_worker_async(queues=[PROCRASTINATE_QUEUE], concurrency=CONCURRENCY, wait=not drain,
                                        install_signal_handlers=False)

    def queued(self) -> int:
        return query(self.dsn, "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'")[0][0]

    def close(self) -> None:
        self.loop.run_until_complete(self.app.close_async())
        super().close()


class Pgqueuer(Library):
    """pgqueuer on asyncpg, one connection for the producer and one per worker run (its ``AsyncpgDriver``);
    ``max_concurrent_tasks=8``, ``batch_size=4``, its defaults otherwise (LISTEN/NOTIFY, a 30 s dequeue
    timeout, jobs deleted when done and logged)."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.connection = self.loop.run_until_complete(asyncpg.connect(dsn))
        self.producer = Queries(AsyncpgDriver(self.connection))
        self.loop.run_until_complete(self.producer.install())

    async def enqueue_many(self, numbers: range) -> None:
        await self.producer.enqueue([TASK] * len(numbers), [str(n).encode() for n in numbers], [0] * len(numbers))

    async def enqueue_one(self, number: int) -> None:
        await self.producer.enqueue(TASK, str(number).encode())

    async def run_worker(self, *, drain: bool) -> None:
        connection = await asyncpg.connect(self.dsn)
        self.manager = QueueManager(Queries(AsyncpgDriver(connection)))

        @self.manager.entrypoint(TASK)
        async def deliver(job: Any) -> None:
            self.handle(int(job.payload))

        options = {"mode": QueueExecutionMode.drain} if drain else {}
        try:
            await self.manager.run(batch_size=PGQUEUER_BATCH, max_concurrent_tasks=CONCURRENCY, **options)
        finally:
            await connection.close()

    async def stop_worker(self, running: asyncio.Task) -> None:
        self.manager.shutdown.set()  # how pgqueuer stops: it finishes what it holds and flushes its log
        await running

    def queued(self) -> int:
        return query(self.dsn, "SELECT count(*) FROM pgqueuer")[0][0]

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        super().close()


# --- the enqueue's cost on the write: pgbench ---------------------------------------------------------------

ENQUEUE_VARIANTS = ("write", "write_waking", "write_in_transaction", "notify_in_transaction", "procrastinate",
                    "pgqueuer")


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def procrastinate_enqueue() -> str:
    """procrastinate's own ``defer_jobs`` statement, with one job's values where its driver binds them."""
    job = (f"ARRAY[ROW({_sql_text(PROCRASTINATE_QUEUE)}, {_sql_text(TASK)}, 0, NULL, NULL,"
           f" {_sql_text(json.dumps(JOB_ARGS))}, NULL)]")
    return procrastinate_queries["defer_jobs"].strip().rstrip(";").replace("%(jobs)s", job)


def pgqueuer_enqueue() -> str:
    """pgqueuer's own enqueue statement (``Queries.enqueue`` of one job), with its values where asyncpg binds them."""
    values = {  # priority, entrypoint, payload, execute_after, dedupe_key, headers: what enqueue() sends
        "$1": "'{0}'", "$2": _sql_text("{" + TASK + "}"),
        "$3": f"ARRAY[convert_to({_sql_text(json.dumps(JOB_ARGS))}, 'UTF8')]",
        "$4": "'{0}'", "$5": "'{NULL}'", "$6": "'{NULL}'",
    }
    statement = re.sub(r"--[^\n]*", "", QueryQueueBuilder().build_enqueue_query("raise"))
    return re.sub(r"\$[1-6]\b", lambda match: values[match[0]], statement).strip()


def enqueue_scripts(workdir: Path, dsn: str, template: int) -> dict[str, Path]:
    """A pgbench script per variant; the event's data as hex, since pgbench reads ``:name`` in it as a variable."""
    ((kind, user_id, data),) = query(
        dsn, "SELECT type, user_id::text, data::text FROM ledger_events WHERE position = %(p)s", {"p": template})
    write = ("INSERT INTO ledger_events (type, user_id, sequence, data, created_at) VALUES"
             f" ({_sql_text(kind)}, {_sql_text(user_id)}, 1,"
             f" convert_from(decode('{data.encode().hex()}', 'hex'), 'UTF8')::json, now())")
    commands = {
        "write": [write],
        "write_waking": [write],  # run while a worker is taken to wait (Ours.waiting)
        "write_in_transaction": ["BEGIN", write, "SELECT 1", "COMMIT"],
        "notify_in_transaction": ["BEGIN", write, f"NOTIFY {NOTIFY_CHANNEL}", "COMMIT"],
        "procrastinate": ["BEGIN", write, procrastinate_enqueue(), "COMMIT"],
        "pgqueuer": ["BEGIN", write, pgqueuer_enqueue(), "COMMIT"],
    }
    scripts = {}
    for name in ENQUEUE_VARIANTS:
        scripts[name] = workdir / f"enqueue-{name}.sql"
        scripts[name].write_text("".join(command + ";\n" for command in commands[name]))
    return scripts


def enqueue_cost(workdir: Path, ours: Ours, conditions: Conditions, seconds: float, rounds: int) -> dict[str, Any]:
    """Each variant for ``seconds`` per round on 8 connections (pgbench -M prepared), the order alternating."""
    scripts = enqueue_scripts(workdir, ours.dsn, ours.template)
    load = Load(dict(os.environ), PROFILES["full"])  # its 8 connections and 2 pgbench threads
    runs: dict[str, list[Any]] = {name: [] for name in ENQUEUE_VARIANTS}
    done = watching(conditions)
    for name in alternating(list(ENQUEUE_VARIANTS), rounds):
        with ours.waiting() if name == "write_waking" else contextlib.nullcontext():
            runs[name].append(load.pgbench(ours.dsn, [scripts[name]], seconds, "prepared"))
        log(f"enqueue cost, {name}: {runs[name][-1].rps:,.0f} tps")
    reference = throughput(runs["write"])
    variants = {
        name: {"tps": round(throughput(slices), 1), "ratio": round(throughput(slices) / reference, 3),
               "latency_ms": round(sum(run.mean_ms * run.requests for run in slices)
                                   / sum(run.requests for run in slices), 3),
               "slices_tps": [round(run.rps, 1) for run in slices], "failed": sum(run.errors for run in slices)}
        for name, slices in runs.items()
    }
    return {"connections": load.profile.connections, "seconds": seconds, "rounds": rounds, "variants": variants,
            **done()}


# --- the run ----------------------------------------------------------------------------------------------


def watching(conditions: Conditions) -> Callable[[], dict[str, Any]]:
    """From now: this run's CPU (this process and PostgreSQL's) and what else went on (neighbours, checkpoints)."""
    before = conditions.snapshot()

    def done() -> dict[str, Any]:
        after = conditions.snapshot()
        return {"cpu_s": round(after["own"] - before["own"], 2), "conditions": Conditions.between(before, after)}

    return done


def alternating(names: list[str], rounds: int) -> Iterator[str]:
    """Each name once per round, the order reversed every other round, so drift on a shared machine weighs on all."""
    for round_number in range(rounds):
        yield from names if round_number % 2 == 0 else reversed(names)


def measure_throughput(queues: dict[str, tuple[Callable[[int], float], Callable[[], Drained]]], conditions: Conditions,
                       jobs: int, rounds: int) -> dict[str, Any]:
    """For each queue, its ``(fill, drain)``: ``jobs`` queued, then drained, ``rounds`` times."""
    slices: dict[str, list[dict[str, Any]]] = {name: [] for name in queues}
    for name in alternating(list(queues), rounds):
        fill, drain = queues[name]
        queued_s = fill(jobs)
        done = watching(conditions)
        drained = drain()
        slices[name].append({**drained._asdict(), "queued_s": round(queued_s, 3), **done()})
        log(f"throughput, {name}: {drained.jobs / drained.seconds:,.0f} jobs/s")
    summary = {}
    for name, runs in slices.items():
        jobs_done, seconds = sum(run["jobs"] for run in runs), sum(run["seconds"] for run in runs)
        summary[name] = {
            "jobs_per_s": round(jobs_done / seconds, 1),
            "cpu_ms_per_job": round(1000 * sum(run["cpu_s"] for run in runs) / jobs_done, 3),
            "queued_per_s": round(jobs_done / sum(run["queued_s"] for run in runs), 1),
            "handled": sum(run["handled"] for run in runs), "jobs": jobs_done,
            "repeats": sum(run["repeats"] for run in runs), "left": runs[-1]["left"],
            "neighbour_cores": [run["conditions"]["neighbour_cores"] for run in runs],
            "slices": [{**run, "seconds": round(run["seconds"], 3)} for run in runs],
        }
    return summary


def measure_wakes(waking: dict[str, Callable[[int], Woken]], conditions: Conditions, wakes: int,
                  rounds: int) -> dict[str, Any]:
    pooled: dict[str, list[Woken]] = {name: [] for name in waking}
    neighbours: dict[str, list[float]] = {name: [] for name in waking}
    for name in alternating(list(waking), rounds):
        done = watching(conditions)
        pooled[name].append(waking[name](wakes // rounds))
        neighbours[name].append(done()["conditions"]["neighbour_cores"])
        log(f"wake-up, {name}: p50 {percentile(pooled[name][-1].latencies_ms, 0.5):.1f} ms")
    summary = {}
    for name, runs in pooled.items():
        latencies = [latency for run in runs for latency in run.latencies_ms]
        summary[name] = {"p50_ms": round(percentile(latencies, 0.50), 2), "p99_ms": round(percentile(latencies, 0.99), 2),
                         "max_ms": round(max(latencies), 2), "mean_ms": round(sum(latencies) / len(latencies), 2),
                         "handled": len(latencies), "jobs": sum(run.jobs for run in runs),
                         "repeats": sum(run.repeats for run in runs), "neighbour_cores": neighbours[name]}
    return summary


def versions(dsn: str) -> dict[str, str]:
    ((postgres,),) = query(dsn, "SHOW server_version")
    packages = {name: metadata.version(name) for name in ("procrastinate", "pgqueuer", "psycopg", "asyncpg")}
    return {"python": platform.python_version(), "postgresql": postgres, **packages,
            "psycopg2": metadata.version("psycopg2-binary")}


def run(jobs: int, wakes: int, seconds: float, rounds: int) -> dict[str, Any]:
    started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    workdir = Path(tempfile.mkdtemp(prefix="transactions-queues-"))
    results: dict[str, Any] = {"kind": "queues", "started_at": started_at, "commit": git_commit(),
                               "loadavg_start": loadavg(), "machine": machine()}
    try:
        with database(workdir) as url, contextlib.ExitStack() as stack:
            dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET_KEY": os.urandom(32).hex()}
            subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=REPO, env=env, check=True, capture_output=True)
            results["versions"] = versions(dsn)
            ours = Ours(url, dsn)
            results["settings"] = {"jobs_per_drain": jobs, "rounds": rounds, "concurrency": CONCURRENCY, "wakes": wakes,
                                   "wake_spacing_ms": WAKE_SPACING_SECONDS * 1000,
                                   "poll_seconds": ours.settings.poll_seconds, "former_poll_seconds": FORMER_POLL_SECONDS,
                                   "ours_default_concurrency": ours.defaults.concurrency,
                                   "pgqueuer_batch_size": PGQUEUER_BATCH, "library_pool_size": LIBRARY_POOL_SIZE}
            stack.callback(ours.close)
            libraries = {"procrastinate": Procrastinate(dsn), "pgqueuer": Pgqueuer(dsn)}
            for library in libraries.values():
                stack.callback(library.close)
            conditions = Conditions(dsn, postmaster_pid(dsn), None)  # this process and PostgreSQL are the run's own

            log(f"throughput: {jobs:,} jobs drained by each queue, {rounds} rounds")
            queues = {"ours": (ours.fill, ours.drain),
                      "ours_default": (ours.fill, functools.partial(ours.drain, ours.defaults)),
                      **{name: (library.fill, library.drain) for name, library in libraries.items()}}
            results["throughput"] = measure_throughput(queues, conditions, jobs, rounds)
            log(f"wake-up: {wakes} jobs to each idle worker, {WAKE_SPACING_SECONDS * 1000:g} ms apart, {rounds} rounds")
            waking = {"ours_listen": ours.wake, "ours_poll": functools.partial(ours.wake, listen=False),
                      "ours_poll_former": functools.partial(ours.wake, listen=False, poll_seconds=FORMER_POLL_SECONDS),
                      **{name: library.wake for name, library in libraries.items()}}
            results["wake"] = measure_wakes(waking, conditions, wakes, rounds)
            log(f"enqueue cost: {len(ENQUEUE_VARIANTS)} variants, {rounds} x {seconds:g} s each")
            results["enqueue"] = enqueue_cost(workdir, ours, conditions, seconds, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["loadavg_end"] = loadavg()
    results["total_s"] = round(time.monotonic() - started, 1)
    return results


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _cores(values: list[float]) -> str:
    return ", ".join(f"{value:g}" for value in values)


def table(r: dict[str, Any]) -> str:
    v, s = r["versions"], r["settings"]
    names = {"ours": "ours (webhooks/store.py)",
             "ours_default": f"ours, at its default {s['ours_default_concurrency']} senders",
             "ours_listen": "ours, woken by its LISTEN",
             "ours_poll": f"ours, polling only, every {s['poll_seconds']:g} s",
             "ours_poll_former": f"ours, polling only, every {s['former_poll_seconds']:g} s",
             "procrastinate": f"procrastinate {v['procrastinate']}", "pgqueuer": f"pgqueuer {v['pgqueuer']}"}
    text = [f"1. throughput: {s['jobs_per_drain']:,} jobs per drain, {s['rounds']} drains each, no-op handler,"
            f" concurrency {s['concurrency']}"]
    rows = [("queue", "jobs/s", "CPU ms/job", "queued/s", "handled", "neighbours' cores")]
    for name, t in r["throughput"].items():
        rows.append((names[name], f"{t['jobs_per_s']:,.0f}", f"{t['cpu_ms_per_job']:.2f}", f"{t['queued_per_s']:,.0f}",
                     f"{t['handled']:,}/{t['jobs']:,}, {t['repeats']} twice", _cores(t["neighbour_cores"])))
    text += _columns(rows)
    text.append("(CPU: this process's and PostgreSQL's per job drained; ours drains feed events, so its jobs/s includes"
                " the fan-out into deliveries; queued/s: committing the events, or a library's batched enqueue)")
    text.append("")
    text.append(f"2. wake-up: {s['wakes']} jobs {s['wake_spacing_ms']:g} ms apart to an idle worker, from the enqueue's"
                " commit to the handler's start")
    rows = [("queue", "p50 ms", "p99 ms", "max ms", "handled", "neighbours' cores")]
    for name, w in r["wake"].items():
        rows.append((names[name], f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}", f"{w['max_ms']:.1f}",
                     f"{w['handled']}/{w['jobs']}", _cores(w["neighbour_cores"])))
    text += _columns(rows)
    text.append("")
    e = r["enqueue"]
    text.append(f"3. a single-row insert with an enqueue in its transaction: pgbench -M prepared, {e['connections']}"
                f" connections, {e['rounds']} x {e['seconds']:g} s each, alternating")
    labels = {"write": "ledger event insert alone (ours)", "write_waking": "the same, a worker waiting: it notifies",
              "write_in_transaction": "BEGIN; insert; SELECT 1; COMMIT",
              "notify_in_transaction": "BEGIN; insert; NOTIFY; COMMIT",
              "procrastinate": "BEGIN; insert; procrastinate defer; COMMIT",
              "pgqueuer": "BEGIN; insert; pgqueuer enqueue; COMMIT"}
    rows = [("variant", "tps", "x alone", "latency ms", "slices tps", "failed")]
    for name, variant in e["variants"].items():
        rows.append((labels[name], f"{variant['tps']:,.0f}", f"{variant['ratio']:.3f}", f"{variant['latency_ms']:.2f}",
                     ", ".join(f"{tps:,.0f}" for tps in variant["slices_tps"]), str(variant["failed"])))
    text += _columns(rows)
    text.append("")
    text.append(f"PostgreSQL {v['postgresql']}, Python {v['python']}, psycopg {v['psycopg']}, asyncpg {v['asyncpg']},"
                f" psycopg2 {v['psycopg2']}; during the enqueue slices: neighbours' cores"
                f" {e['conditions']['neighbour_cores']}, checkpoints {e['conditions']['checkpoints']}, autovacuum runs"
                f" {e['conditions']['autovacuum_runs']}; load average {r['loadavg_start']} -> {r['loadavg_end']} on"
                f" {r['machine']['cores']} cores; {r['total_s']} s in all")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Our webhook queue against procrastinate and pgqueuer (BENCHMARKS.md).")
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs queued and drained by each queue per round")
    parser.add_argument("--wakes", type=int, default=200, help="jobs sent one at a time to each idle worker, in all")
    parser.add_argument("--seconds", type=float, default=10, help="per pgbench slice of the enqueue measurement")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each measurement, the order alternating")
    args = parser.parse_args(argv)
    results = run(args.jobs, args.wakes, args.seconds, args.rounds)
    publish(results, "queues", table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
