"""The benchmark runner: ``make bench`` (full) and ``make bench-quick``.

One run, one machine, every number next to its reference:

1. a PostgreSQL: the embedded one in a temporary directory, with production
   durability (fsync, synchronous commit), or a fresh database on the server
   named by ``BENCH_DATABASE_URL`` (created and dropped by the run);
2. migrations, then ``python -m bench.seed`` with a 200,000-row user and a 10-row
   user among a long tail of others;
3. the service under gunicorn with ``gunicorn.conf.py`` (its production
   settings), with ``RATELIMIT_ENABLED=false`` (the limits would refuse a
   benchmark's traffic) and ``LOG_LEVEL=WARNING`` (no access line per request);
4. a warm-up, then scenarios A to F, each measured with its reference in the
   same run: wrk (Lua scripts in ``bench/lua``) for HTTP, pgbench for the
   database's own limit, ``bench/openloop.py`` for latency at a fixed rate;
   then G: A and B again through PgBouncer in transaction mode (a second
   gunicorn, as a fleet behind a pooler is configured) beside the direct
   service, in alternating slices; then H: spends by users with five lots
   beside spends by users with one; then I: spends with a webhook endpoint
   subscribed beside spends with it disabled, and the time from a spend's
   201 to its event at a receiver in this process (``bench/receiver.py``);
   before I, the reads over time: J, a page of the 200,000-row user filtered
   by a metadata pair, by a reference and by an interval, beside the
   unfiltered page; K, the user's whole history exported as CSV, beside
   PostgreSQL's own ``COPY (SELECT ...) TO STDOUT`` of the same rows, and the
   workers' memory while it streams; L, a 30-day usage summary split by model
   of the 200,000-row user beside the 10-row user's; and, also before I, M:
   batches of 100 spends beside pgbench running the least batched SQL and
   beside single spends;
5. a table, and one JSON object on the last line, also written to ``bench/results/``.

Everything listens on 127.0.0.1, every load is bounded in time, and every
process and directory the run made is removed in ``finally`` blocks.
``--only I`` (or J, K, L, M, or several: ``--only JKL``) does the setup and those scenarios alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import jwt
import psycopg2
import requests
from sqlalchemy.engine import make_url

from bench.openloop import percentile
from bench.receiver import Receiver
from devtools.devdb import EmbeddedPostgres, bin_dir, wait_for_replay
from devtools.devpooler import PgBouncer, pgbouncer_binary
from transactions_service.ledger.rules import encode_cursor
from transactions_service.ledger.store import EXPORT_COLUMNS, GRAIN_ROWS, PERIOD, SPEND_ORDER
from transactions_service.scopes import MANAGE_WEBHOOKS
from transactions_service.webhooks.store import FAN_OUT

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
LUA = Path("bench/lua")  # wrk runs from the repository root; the scripts include each other by this path
PYTHON = sys.executable
FLASK = str(Path(sys.executable).parent / "flask")

HEAVY_USER = uuid.UUID("5e1f0000-0000-4000-8000-000000200000")
LIGHT_USER = uuid.UUID("5e1f0000-0000-4000-8000-000000000010")
PAGE_SIZE = 20
DEEP_PAGE = 5_000
SPENDERS = 100
MIXED_USERS = 2_000
TOP_UP_CREDITS = 1_000_000
# Scenario H: users of each kind (one lot, five lots), and the priorities and lifetime of the five-lot
# users' four grants: below a purchase's 50, so that a spend draws on the first grant, and far off.
LOT_HOLDERS = 100
# Scenario M: batches of BATCH_SIZE spends over BATCH_USERS users, BATCH_HOT_SHARE of the items for one of
# BATCH_HOT users; pgbench picks one of BATCH_SCRIPTS fixed batches drawn the same way for each transaction.
BATCH_SIZE = 100
BATCH_USERS = 1_000
BATCH_HOT = 4
BATCH_HOT_SHARE = 0.05
BATCH_SCRIPTS = 40
GRANT_PRIORITIES = (10, 20, 30, 40)
GRANT_EXPIRES_IN = 365 * 86_400
# Embedded PostgreSQL: production durability; a buffer cache that holds the working set, as a tuned server's would.
PG_SETTINGS = ("shared_buffers=512MB", "max_connections=200")

# Scenario G: PgBouncer's server connections for the pooled service; fewer than the 8 concurrent
# requests, so that transactions really share them, as a fleet's do.
POOLER_POOL_SIZE = 4
# The timeouts the service sends as startup options when direct, set on the role for the pooled service.
STATEMENT_TIMEOUT_MS, LOCK_TIMEOUT_MS = 10_000, 5_000

# Scenario I: the events a spend can emit (transaction.created; balance.low when it falls below the
# threshold), how long after the last acknowledged spend its event may still come before it counts as
# missing, and how long the worker may take to deliver what is queued before the open-loop part.
WEBHOOK_EVENT_TYPES = ["transaction.created", "balance.low"]
WEBHOOK_GRACE_SECONDS = 30
WEBHOOK_DRAIN_SECONDS = 300

# Scenario J: the metadata pair a filtered page asks for, the seed's rarest model (3% of usage), so
# that the page's 20 rows are the furthest apart in the ledger; and the interval, 30 days ending 60 days ago.
FILTER_MODEL = "reel"
FILTER_INTERVAL_DAYS = (90, 60)
# Scenario K: how often the RSS sampler reads the workers' memory while an export streams.
RSS_SAMPLE_SECONDS = 0.02
# Scenario L: the summary asked for (the default range: 30 days ending today, in that zone).
SUMMARY_QUERY = {"granularity": "day", "group_by": "metadata.model", "tz": "Europe/Berlin"}
# The scenarios --only can run after the setup, in the order a run without --only runs them.
ONLY_SCENARIOS = "JKLMI"

# The targets, as (key, comparison, bound).
TARGETS = [
    ("post_ratio", ">=", 0.30),
    ("page_ratio", ">=", 0.50),
    ("deep_ratio", "<=", 1.2),
    ("balance_ratio", "<=", 1.2),
    ("mixed_p99_ms", "<=", 25.0),
    ("rss_growth", "<=", 1.10),
    ("lots_five_ratio", ">=", 0.70),
    # A filtered page costs what the unfiltered one does: within C's and D's 1.2x, as throughput (1 / 1.2).
    ("filtered_page_ratio_metadata", ">=", 0.83),
    ("filtered_page_ratio_reference", ">=", 0.83),
    ("filtered_page_ratio_interval", ">=", 0.83),
    ("export_ratio", ">=", 0.30),
    ("export_rss_growth_mb", "<", 20.0),
    ("summary_heavy_vs_light", "<=", 1.5),
    ("batch_ratio", ">=", 0.5),
    ("batch_vs_single", ">=", 10.0),
    ("webhook_spend_ratio", ">=", 0.90),
    ("webhook_latency_p99_ms", "<=", 1000.0),
]


@dataclass(frozen=True)
class Profile:
    name: str
    users: int
    transactions: int
    heavy_rows: int
    seconds: int  # per throughput slice (A, B)
    rounds: int  # reference/subject pairs of slices; the order alternates so drift on a shared machine cancels
    latency_seconds: int  # per latency slice (C, D: one connection)
    latency_rounds: int
    warm_up_seconds: int
    mixed_seconds: int
    rss_requests: int
    connections: int = 8
    threads: int = 2


PROFILES = {
    "full": Profile("full", users=10_000, transactions=1_000_000, heavy_rows=200_000, seconds=10, rounds=4,
                    latency_seconds=5, latency_rounds=8, warm_up_seconds=10, mixed_seconds=30,
                    rss_requests=100_000),
    "quick": Profile("quick", users=3_000, transactions=300_000, heavy_rows=200_000, seconds=5, rounds=2,
                     latency_seconds=3, latency_rounds=4, warm_up_seconds=5, mixed_seconds=10, rss_requests=20_000),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- processes -------------------------------------------------------------------------------------------------


@contextmanager
def database(workdir: Path, settings: tuple[str, ...] = PG_SETTINGS) -> Iterator[str]:
    """A fresh, empty database for this run, dropped (or its server destroyed) afterwards."""
    external = os.environ.get("BENCH_DATABASE_URL")
    if external:
        server = make_url(external).set(drivername="postgresql")
        name = f"bench_{secrets.token_hex(4)}"
        admin = psycopg2.connect(server.render_as_string(hide_password=False))
        admin.autocommit = True
        try:
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
            yield server.set(database=name, drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
        return
    server = EmbeddedPostgres(workdir / "postgres", settings=settings)
    try:
        server.start()
        yield server.ensure_database("bench")
    finally:
        server.destroy()


@dataclass
class Server:
    process: subprocess.Popen
    url: str

    def workers(self) -> list[int]:
        return worker_pids(self.process.pid)


@contextmanager
def gunicorn(app_spec: str, env: dict[str, str], log_path: Path, ready_path: str, headers: dict[str, str] | None = None) -> Iterator[Server]:
    """``app_spec`` under gunicorn with gunicorn.conf.py, on a socket bound here and handed over (no port race)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.set_inheritable(True)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    command = [PYTHON, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"),
               "--bind", f"fd://{listener.fileno()}", app_spec]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   pass_fds=(listener.fileno(),))
    listener.close()
    server = Server(process, url)
    try:
        expected = int(env.get("WEB_CONCURRENCY") or (os.cpu_count() or 1) * 2 + 1)
        deadline = time.monotonic() + 60
        while not _answers(url + ready_path, headers) or len(server.workers()) < expected:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn ({app_spec}) did not start; see {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM, which lets the process finish what it is doing; SIGKILL if it has not after ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def webhook_worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``flask webhooks work``, as production runs it beside gunicorn; stopped with SIGTERM, its deliveries finish."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([FLASK, "--app", "wsgi", "webhooks", "work"], cwd=REPO, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)
        if process.returncode != 0:
            log(f"the webhook worker exited with {process.returncode}; see {log_path}")


def _answers(url: str, headers: dict[str, str] | None) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def worker_pids(master_pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                children.append(int(entry))
    return sorted(children)


TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, of its descendants it has reaped (cutime, cstime) and of its live children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    for child in worker_pids(pid):
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited just now: counted in cutime from the next reading on
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def own_cpu_seconds() -> float:
    """This process's CPU, all its threads, without its children's."""
    times = os.times()
    return times.user + times.system


def postmaster_pid(dsn: str) -> int:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
        # Read while this backend lives: its parent is the postmaster.
        postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    connection.close()
    return postmaster


class Conditions:
    """What else went on while a scenario ran: the neighbours' CPU, checkpoints and autovacuum.

    The neighbours' CPU is the machine's busy time (/proc/stat) less this
    run's own: the runner and everything it started and reaped (wrk, pgbench,
    the open-loop generator), the gunicorn tree and the embedded PostgreSQL.
    """

    def __init__(self, dsn: str, service_pid: int, postmaster: int | None) -> None:
        self.dsn, self.service_pid, self.postmaster = dsn, service_pid, postmaster

    def snapshot(self) -> dict[str, Any]:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        own += tree_cpu_seconds(self.service_pid)
        if self.postmaster:
            own += tree_cpu_seconds(self.postmaster)
        checkpoints = autovacuums = None
        with psycopg2.connect(self.dsn) as connection, connection.cursor() as cursor:
            try:
                cursor.execute("SELECT num_timed + num_requested FROM pg_stat_checkpointer")  # PostgreSQL 17+
                checkpoints = cursor.fetchone()[0]
            except psycopg2.Error:
                connection.rollback()
            cursor.execute("SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM pg_stat_user_tables")
            autovacuums = int(cursor.fetchone()[0])
        connection.close()
        return {"time": time.monotonic(), "busy": (user + nice + system + irq + softirq + steal) / TICKS,
                "own": own, "loadavg": loadavg(), "checkpoints": checkpoints, "autovacuums": autovacuums}

    @staticmethod
    def between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        elapsed = after["time"] - before["time"]
        others = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
        checkpoints = (after["checkpoints"] - before["checkpoints"]
                       if before["checkpoints"] is not None and after["checkpoints"] is not None else None)
        return {"loadavg": [before["loadavg"], after["loadavg"]],
                "neighbour_cores": round(max(others, 0.0) / elapsed, 2),
                "checkpoints": checkpoints,
                "autovacuum_runs": after["autovacuums"] - before["autovacuums"]}


def errors_logged(path: Path) -> int:
    """The ERROR lines in a service's JSON log: requests that failed inside it."""
    return sum(1 for line in path.read_text(errors="replace").splitlines() if '"level": "ERROR"' in line)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` (the make targets do it as root)")


def publish(results: dict[str, Any], name: str, summary: str) -> None:
    """Write the results to bench/results/<UTC time>-<name>.json; print the summary, where, and the JSON line last."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    line = json.dumps(results, separators=(",", ":"), allow_nan=False)
    path = RESULTS / f"{stamp}-{name}.json"
    path.write_text(line + "\n")
    print(summary)
    print(f"written to {path.relative_to(REPO)}")
    print(line, flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --- load generators -------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One load run: throughput and latency (ms), from wrk, pgbench or the open-loop generator."""

    requests: int
    seconds: float
    errors: int
    mean_ms: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def throughput(runs: list[Measured]) -> float:
    return sum(run.requests for run in runs) / sum(run.seconds for run in runs)


def median_latency(runs: list[Measured]) -> float:
    """The median over slices of each slice's median latency: a burst from a neighbour moves one slice, not this."""
    return statistics.median(run.p50_ms for run in runs)


class Load:
    """Runs the load generators and counts what the service has served (for scenario F)."""

    def __init__(self, env: dict[str, str], profile: Profile) -> None:
        self.env = env
        self.profile = profile
        self.served = 0
        self._invocations = 0

    def wrk(self, url: str, script: str, seconds: float, *, connections: int | None = None,
            threads: int | None = None, headers: dict[str, str] | None = None, counts: bool = True,
            args: tuple[str, ...] = ()) -> Measured:
        """wrk with ``script``; ``args`` go to the script after the invocation's name (see common.lua)."""
        connections = connections or self.profile.connections
        threads = min(threads or self.profile.threads, connections)
        self._invocations += 1
        command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                   "--timeout", "10s", "-s", str(LUA / script)]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        command += [url, "--", f"w{self._invocations}", *args]
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=seconds + 120)
        line = next((line for line in done.stdout.splitlines() if line.startswith("WRK ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        report = json.loads(line[4:])
        errors = sum(report[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx"))
        if counts:
            self.served += report["requests"]
        return Measured(report["requests"], report["duration_us"] / 1e6, errors,
                        report["mean_us"] / 1000, report["p50_us"] / 1000, report["p99_us"] / 1000)

    def pgbench(self, dsn: str, scripts: list[Path], seconds: float, mode: str) -> Measured:
        command = [str(bin_dir() / "pgbench"), "-n", "-M", mode, "-c", str(self.profile.connections),
                   "-j", str(self.profile.threads), "-T", str(max(1, round(seconds)))]
        for script in scripts:
            command += ["-f", str(script)]
        command.append(dsn)
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", done.stdout, re.M)
        processed = re.search(r"^number of transactions actually processed: (\d+)", done.stdout, re.M)
        failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.M)
        latency = re.search(r"^latency average = ([0-9.]+) ms", done.stdout, re.M)
        if done.returncode != 0 or not (tps and processed):
            raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        count = int(processed[1])
        return Measured(count, count / float(tps[1]), int(failed[1]) if failed else 0,
                        float(latency[1]) if latency else float("nan"))

    def openloop(self, url: str, data_json: Path, rate: float, seconds: float, *, mix: str = "mixed",
                 name: str = "openloop", acks: Path | None = None) -> dict[str, Any]:
        """bench/openloop.py: ``mix`` at ``rate``; with ``acks``, each 201's time and transaction id written there."""
        command = [PYTHON, "-m", "bench.openloop", "--url", url, "--data", str(data_json),
                   "--rate", f"{rate:.1f}", "--duration", str(seconds), "--mix", mix, "--name", name]
        if acks is not None:
            command += ["--acks", str(acks)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120)
        line = next((line for line in done.stdout.splitlines() if line.startswith("OPENLOOP ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"open-loop generator failed:\n{done.stdout}\n{done.stderr}")
        report = json.loads(line[9:])
        self.served += report["completed"]
        return report


@dataclass
class Paired:
    """A subject and its reference, measured in alternating slices of the same run."""

    reference: list[Measured]
    subject: list[Measured]

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.reference + self.subject)

    def slices(self) -> dict[str, list[float]]:
        return {
            "reference_rps": [round(run.rps, 1) for run in self.reference],
            "subject_rps": [round(run.rps, 1) for run in self.subject],
            "reference_p50_ms": [finite(run.p50_ms) for run in self.reference],
            "subject_p50_ms": [finite(run.p50_ms) for run in self.subject],
        }


def finite(value: float, digits: int = 3) -> float | None:
    """JSON has no NaN: pgbench reports no median, for instance, and no webhook may have arrived."""
    return round(value, digits) if math.isfinite(value) else None


def paired(rounds: int, reference: Callable[[], Measured], subject: Callable[[], Measured]) -> Paired:
    """Reference and subject back to back, ``rounds`` times, the order alternating (R S, S R, R S, ...)
    so that a machine slowly getting busier or quieter weighs on both alike."""
    result = Paired([], [])
    for round_number in range(rounds):
        steps = [(reference, result.reference), (subject, result.subject)]
        for measure, into in steps if round_number % 2 == 0 else reversed(steps):
            into.append(measure())
    return result


# --- the run ---------------------------------------------------------------------------------------------------


def token(secret: str, user_id: str) -> str:
    """A user's token, as the identity provider would sign it."""
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + 4 * 3600}, secret, algorithm="HS256")


def api_key(env: dict[str, str], name: str, scopes: str) -> str:
    """A service's API key, made as an operator makes one (the last line `keys create` prints)."""
    created = subprocess.run([FLASK, "--app", "wsgi", "keys", "create", "--name", name, "--scope", scopes],
                             cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return created.stdout.strip().splitlines()[-1]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def lua_table(value: Any) -> str:
    """Python data as a Lua literal, for ``dofile`` in the wrk scripts."""
    if isinstance(value, dict):
        return "{" + ",".join(f"[{json.dumps(key)}]={lua_table(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ",".join(lua_table(item) for item in value) + "}"
    return json.dumps(value)


def pgbench_literal(text: str) -> str:
    """``text`` inside an escape string (E'...') of a pgbench script, its colons as \\x3a: pgbench would
    read ":07" in a timestamp as a variable."""
    return text.replace("\\", "\\\\").replace("'", "''").replace(":", "\\x3a")


def pgbench_spend_script(user_id: uuid.UUID, run: str, response_body: str) -> str:
    """The least SQL a correct spend of 1 credit needs on our schema: one statement, in autocommit.

    It writes what a spend must and nothing else: it locks the balance row if
    1 credit is available, then the first usable lot in spend order
    (unexpired, a credit left), as every write of a user's locks them; takes
    the credit from that lot and from the balance row (numbering the user's
    next event there); inserts the usage row, its posting with the user's
    totals after it, its ``transaction.created`` event and the idempotency
    record (both with the service's own response body). Nothing is written
    when no lot can pay.

    One statement of CTEs, because that is the least a client can send: one
    round trip and one implicit transaction, as the service sends (ADR 0003).
    pgbench variables (``\\gset``) would cost a round trip per statement plus
    ``BEGIN`` and ``COMMIT``, and a spend refused (no row to ``\\gset``) would
    abort the client instead of writing nothing. It is lighter than the
    service's statement only where one credit allows: the first usable lot
    always covers it, so ``LIMIT 1`` replaces the plan over every usable lot.

    Each script is pinned to one spender because pgbench cannot pick from a list;
    bench/run.py passes one script per spender and pgbench picks one at random
    for every transaction, as wrk picks a spender for every request.
    """
    body = pgbench_literal(response_body)
    request_hash = hashlib.sha256(b"bench").hexdigest()
    return f"""\\set k random(1, 9000000000000000000)
WITH balance_row AS MATERIALIZED (SELECT balance, held FROM user_balances
    WHERE user_id = '{user_id}' AND balance - held >= 1 FOR UPDATE),
  lot AS MATERIALIZED (SELECT id FROM credit_lots
    WHERE user_id = '{user_id}' AND remaining > 0 AND (expires_at IS NULL OR expires_at > now())
      AND EXISTS (SELECT 1 FROM balance_row)
    ORDER BY {SPEND_ORDER} LIMIT 1 FOR UPDATE),
  took AS (UPDATE credit_lots SET remaining = remaining - 1 WHERE id = (SELECT id FROM lot)),
  applied AS (UPDATE user_balances SET balance = balance - 1, event_sequence = event_sequence + 1, updated_at = now()
    WHERE user_id = '{user_id}' AND EXISTS (SELECT 1 FROM lot) RETURNING balance, held, event_sequence),
  new AS (INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status, created_at, updated_at)
    SELECT uuidv7(), '{user_id}', 'usage', 0, -1, 'Image generation (1024x1024)', 'completed', now(), now()
    FROM applied RETURNING id),
  posted AS (INSERT INTO lot_postings (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)
    SELECT new.id, lot.id, '{user_id}', -1, 0, applied.balance, applied.held, now() FROM new, lot, applied),
  created AS (INSERT INTO ledger_events (type, user_id, sequence, data, created_at)
    SELECT 'transaction.created', '{user_id}', applied.event_sequence, E'{body}'::json, now() FROM new, applied)
INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id, user_id)
  SELECT 'generation-service', '{run}-pgbench-' || :client_id || '-' || :k, '{request_hash}', 201, E'{body}', id,
         '{user_id}'
  FROM new;
"""


def pgbench_batch_script(users: list[str], run: str, response_body: str) -> str:
    """The least SQL a correct batch of 1-credit spends needs on our schema: one statement, in autocommit.

    ``users`` holds each item's user, in item order (a user may have several).
    It locks the balance rows of the users with as many credits available as
    they have items, in user-id order, then each one's first usable lot in
    spend order with that many credits left; takes each user's items from that
    lot and from their balance row (numbering their events there); inserts
    each item's usage row, its posting with the user's totals after it, its
    ``transaction.created`` event and its idempotency record (with the
    service's own response body for a spend), and adds the credits to the
    usage rollup (summaries read it, so a correct write keeps it). Items of a
    user whose lot cannot pay them all write nothing.

    It is lighter than the service's statement where 1-credit items and one
    lot allow, as ``pgbench_spend_script`` is: one lot covers a user's items
    (``LIMIT 1``, no plan over every lot); no metadata, no low-balance check,
    no search for keys recorded before.
    """
    body = pgbench_literal(response_body)
    request_hash = hashlib.sha256(b"bench").hexdigest()
    return f"""\\set k random(1, 9000000000000000000)
WITH items AS MATERIALIZED (SELECT i.user_id, i.ord, uuidv7() AS id,
    row_number() OVER (PARTITION BY i.user_id ORDER BY i.ord) AS rank
    FROM unnest('{{{",".join(users)}}}'::uuid[]) WITH ORDINALITY AS i (user_id, ord)),
  wanted AS MATERIALIZED (SELECT user_id, count(*) AS n FROM items GROUP BY user_id),
  balance_rows AS MATERIALIZED (SELECT b.user_id, b.balance, b.held, b.event_sequence, w.n
    FROM user_balances AS b JOIN wanted AS w USING (user_id) WHERE b.balance - b.held >= w.n
    ORDER BY b.user_id FOR UPDATE OF b),
  lots AS MATERIALIZED (SELECT b.user_id, b.n, l.id FROM balance_rows AS b,
    LATERAL (SELECT id FROM credit_lots WHERE user_id = b.user_id AND remaining >= b.n
      AND (expires_at IS NULL OR expires_at > now()) ORDER BY {SPEND_ORDER} LIMIT 1 FOR UPDATE) AS l),
  took AS (UPDATE credit_lots AS l SET remaining = l.remaining - lots.n FROM lots WHERE l.id = lots.id),
  applied AS (UPDATE user_balances AS b SET balance = b.balance - lots.n, event_sequence = b.event_sequence + lots.n,
    updated_at = now(), posted_at = greatest(b.posted_at, now()) FROM lots
    WHERE b.user_id = ANY('{{{",".join(sorted(set(users)))}}}'::uuid[]) AND b.user_id = lots.user_id),
  accepted AS MATERIALIZED (SELECT i.*, lots.id AS lot_id, r.balance, r.held, r.event_sequence
    FROM items AS i JOIN lots USING (user_id) JOIN balance_rows AS r USING (user_id)),
  new AS (INSERT INTO user_transactions (id, user_id, type, amount, credits, description, status, created_at, updated_at)
    SELECT id, user_id, 'usage', 0, -1, 'Image generation (1024x1024)', 'completed', now(), now()
    FROM accepted ORDER BY ord),
  posted AS (INSERT INTO lot_postings (transaction_id, lot_id, user_id, credits, held, balance_after, held_after, created_at)
    SELECT id, lot_id, user_id, -1, 0, balance - rank, held, now() FROM accepted ORDER BY ord),
  rolled AS (INSERT INTO usage_rollup AS r (user_id, key, grain, period, value, credits)
    SELECT user_id, '', g.minutes, {PERIOD.format(width="g.width", moment="now()")}, '', count(*)
    FROM accepted, {GRAIN_ROWS} GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (user_id, key, grain, period, value) DO UPDATE SET credits = r.credits + excluded.credits),
  created AS (INSERT INTO ledger_events (type, user_id, sequence, data, created_at)
    SELECT 'transaction.created', user_id, event_sequence + rank, E'{body}'::json, now() FROM accepted ORDER BY ord)
INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body, transaction_id, user_id)
  SELECT 'generation-service', '{run}-pgbatch-' || :client_id || '-' || :k || '-' || ord, '{request_hash}', 201,
         E'{body}', id, user_id
  FROM accepted;
"""


def batch_draw(many: list[str], hot: list[str], rng: random.Random) -> list[str]:
    """A batch's users, item by item: one of the hot users for BATCH_HOT_SHARE of the items (as batch.lua)."""
    return [rng.choice(hot if rng.random() < BATCH_HOT_SHARE else many) for _ in range(BATCH_SIZE)]


def versions(dsn: str) -> dict[str, str]:
    import gunicorn as gunicorn_package

    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    connection.close()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "python": platform.python_version(),
        "postgresql": postgres,
        "gunicorn": gunicorn_package.__version__,
        "wrk": wrk_version.split(" [")[0],
    }


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo)[1])
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {"cores": os.cpu_count(), "memory_gib": round(total_kb / 1024 / 1024, 1),
            "cpu": model[1].strip() if model else platform.machine(), "kernel": platform.release()}


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class Prepared:
    """A seeded database, the service serving it, and what the scenarios need to drive it."""

    workdir: Path
    env: dict[str, str]
    dsn: str
    run_id: str
    service: Server
    spenders: list[str]
    spend_scripts: list[Path]
    tokens: dict[str, str]
    deep_cursor: str
    seed: dict[str, Any]
    # Scenario H's users by the name of their list in the data file; H registers them and gives them their lots.
    lot_holders: dict[str, list[str]]
    # Scenario M's users, the many and the hot, by the name of their list in the data file; M registers them.
    batch_users: dict[str, list[str]]


def top_up(api: str, headers: dict[str, str], user_id: str, credits: int, kind: str = "purchase",
           **lot_terms: Any) -> None:
    """Credits for a benchmark user, through the API: a completed purchase, or a grant."""
    body = {"user_id": user_id, "type": kind, "amount": "0", "credits": credits, "description": "Benchmark top-up",
            **lot_terms}
    requests.post(f"{api}/transactions", json=body, headers=headers, timeout=30).raise_for_status()


def prepare(stack: ExitStack, profile: Profile, pg_settings: tuple[str, ...] = PG_SETTINGS) -> Prepared:
    """Everything up to the first measurement; what it starts is stopped when ``stack`` closes."""
    workdir = Path(tempfile.mkdtemp(prefix="transactions-bench-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    (workdir / "metrics").mkdir()
    secret = secrets.token_urlsafe(48)
    run_id = f"bench{secrets.token_hex(4)}"
    log(f"{profile.name} run {run_id}; working in {workdir}")
    url = stack.enter_context(database(workdir, pg_settings))
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "JWT_SECRET_KEY": secret,
        "RATELIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        "BENCH_DATA": str(workdir / "data.lua"),
        "BENCH_BARE_BODY": str(workdir / "first-page.json"),
        # Scenario I's receiver is on this machine, over http, which production refuses.
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    }

    subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=REPO, env=env, check=True, capture_output=True)
    log(f"seeding {profile.transactions:,} transactions for {profile.users:,} users")
    seed_started = time.monotonic()
    seeded = subprocess.run(
        [PYTHON, "-m", "bench.seed", "--users", str(profile.users),
         "--transactions", str(profile.transactions), "--heavy-user", str(HEAVY_USER),
         "--heavy-rows", str(profile.heavy_rows), "--light-user", str(LIGHT_USER), "--light-rows", "10"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )
    sys.stderr.write(seeded.stdout)
    if seeded.returncode != 0:
        raise RuntimeError("python -m bench.seed failed")
    loaded = re.search(r"in ([0-9.]+) s \(", seeded.stdout)
    seed = {"seed_rows": profile.transactions, "seed_load_s": float(loaded[1]) if loaded else None,
            "seed_command_s": round(time.monotonic() - seed_started, 1)}

    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id FROM user_balances WHERE user_id NOT IN (%s, %s) ORDER BY md5(user_id::text) LIMIT %s",
            (str(HEAVY_USER), str(LIGHT_USER), SPENDERS),
        )
        spenders = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT user_id FROM user_balances WHERE balance - held >= 200 AND user_id <> ALL(%s::uuid[]) "
            "ORDER BY md5(user_id::text || 'mixed') LIMIT %s",
            ([HEAVY_USER.hex, LIGHT_USER.hex, *spenders], MIXED_USERS),
        )
        mixed_users = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT (created_at AT TIME ZONE 'UTC')::text, id::text FROM user_transactions WHERE user_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 2",
            (str(HEAVY_USER), (DEEP_PAGE - 1) * PAGE_SIZE - 1),
        )
        (last_created, last_id), (_, deep_first_id) = cursor.fetchall()
    connection.close()
    deep_cursor = encode_cursor(last_created, last_id)

    tokens = {
        "generation": api_key(env, "generation-service", "usage:write transactions:read"),
        "payment": api_key(env, "payment-service", "purchases:write transactions:read users:write"),
        "heavy": token(secret, str(HEAVY_USER)),
        "light": token(secret, str(LIGHT_USER)),
    }
    lot_holders = {name: [str(uuid.uuid4()) for _ in range(LOT_HOLDERS)] for name in ("lots_one", "lots_five")}
    batch_users = {name: [str(uuid.uuid4()) for _ in range(count)]
                   for name, count in (("batch_users", BATCH_USERS), ("batch_hot", BATCH_HOT))}
    data = {
        "run": run_id,
        "generation_token": tokens["generation"],
        "payment_token": tokens["payment"],
        "spenders": spenders,
        "users": [{"id": user, "token": token(secret, user)} for user in mixed_users],
        **lot_holders,
        **batch_users,
        "batch_size": BATCH_SIZE,
        "batch_hot_share": BATCH_HOT_SHARE,
    }
    (workdir / "data.lua").write_text("return " + lua_table(data) + "\n")
    (workdir / "data.json").write_text(json.dumps(data))

    log("starting the service under gunicorn (gunicorn.conf.py)")
    service = stack.enter_context(gunicorn("wsgi:app", env, workdir / "service.log", "/readyz"))
    api = service.url + "/api"
    for spender in spenders:  # enough credits for every spend of scenario A, from the service and pgbench
        top_up(api, bearer(tokens["payment"]), spender, TOP_UP_CREDITS)
    spend = {"user_id": spenders[0], "type": "usage", "amount": "0", "credits": -1,
             "description": "Image generation (1024x1024)", "status": "completed"}
    sample = requests.post(f"{api}/transactions", json=spend, timeout=30,
                           headers={**bearer(tokens["generation"]), "Idempotency-Key": f"{run_id}-sample"})
    sample.raise_for_status()
    scripts = []
    for index, spender in enumerate(spenders):
        script = workdir / f"spend-{index:03d}.sql"
        script.write_text(pgbench_spend_script(uuid.UUID(spender), run_id, sample.text))
        scripts.append(script)

    first_page = requests.get(f"{api}/transactions?limit={PAGE_SIZE}", headers=bearer(tokens["heavy"]), timeout=30)
    first_page.raise_for_status()
    (workdir / "first-page.json").write_bytes(first_page.content)
    deep = requests.get(f"{api}/transactions", params={"limit": PAGE_SIZE, "cursor": deep_cursor},
                        headers=bearer(tokens["heavy"]), timeout=30)
    deep.raise_for_status()
    if deep.json()["data"][0]["id"] != str(deep_first_id):
        raise RuntimeError("the deep cursor does not lead to page 5,000")
    return Prepared(workdir, env, dsn, run_id, service, spenders, scripts, tokens, deep_cursor, seed, lot_holders,
                    batch_users)


class AlsoOwnConditions(Conditions):
    """Conditions that also count processes a scenario started and keeps running (a replica, a second
    gunicorn, PgBouncer) as this run's own CPU: live children are not in the runner's reaped-children times."""

    def __init__(self, base: Conditions, also: list[int]) -> None:
        super().__init__(base.dsn, base.service_pid, base.postmaster)
        self.also = also

    def snapshot(self) -> dict[str, Any]:
        values = super().snapshot()
        values["own"] += sum(tree_cpu_seconds(pid) for pid in self.also)
        return values


def replica_page(setup: Prepared, load: Load, conditions: Conditions, profile: Profile) -> tuple[dict, dict]:
    """Scenario B served from a streaming replica of the bench database, against the primary in the same slices.

    The replica is made after the other scenarios (so that it weighs on none of
    them) and removed before the ledger check; a second gunicorn reads history
    from it with DATABASE_READ_URL, the first keeps reading from the primary.
    """
    heavy = bearer(setup.tokens["heavy"])
    with ExitStack() as stack:
        log("B on a replica: pg_basebackup of the bench database, then catching up")
        started = time.monotonic()
        replica = EmbeddedPostgres(setup.workdir / "replica", settings=PG_SETTINGS)
        stack.callback(replica.destroy)
        replica.start_replica_of(setup.env["DATABASE_URL"])
        replica_url = replica.url(make_url(setup.env["DATABASE_URL"]).database)
        wait_for_replay(setup.env["DATABASE_URL"], replica_url, timeout=600)
        ready_s = time.monotonic() - started
        env = {**setup.env, "DATABASE_READ_URL": replica_url}
        reader = stack.enter_context(gunicorn("wsgi:app", env, setup.workdir / "replica-service.log", "/readyz"))
        if requests.get(reader.url + "/readyz", timeout=10).json().get("replica") != "ok":
            raise RuntimeError("the service started with DATABASE_READ_URL does not reach the replica")
        replica_dsn = make_url(replica_url).set(drivername="postgresql").render_as_string(hide_password=False)
        measured = AlsoOwnConditions(conditions, [reader.process.pid, postmaster_pid(replica_dsn)])
        primary_url = f"{setup.service.url}/api/transactions?limit={PAGE_SIZE}"
        replica_url_page = f"{reader.url}/api/transactions?limit={PAGE_SIZE}"
        load.wrk(replica_url_page, "get.lua", 3, counts=False, headers=heavy)  # the replica's cache, as B warmed the primary's
        before = measured.snapshot()
        page = paired(
            profile.rounds,
            lambda: load.wrk(primary_url, "get.lua", profile.seconds, counts=False, headers=heavy),
            lambda: load.wrk(replica_url_page, "get.lua", profile.seconds, counts=False, headers=heavy),
        )
        scenario = {**measured.between(before, measured.snapshot()), **page.slices()}
        fallbacks = sum(1 for line in (setup.workdir / "replica-service.log").read_text(errors="replace").splitlines()
                        if "read replica unavailable" in line)
    primary_rps, replica_rps = throughput(page.reference), throughput(page.subject)
    return scenario, {"primary_page_rps": round(primary_rps, 1), "replica_page_rps": round(replica_rps, 1),
                      "replica_page_ratio": round(replica_rps / primary_rps, 3), "replica_page_errors": page.errors,
                      "replica_fallbacks_logged": fallbacks, "replica_ready_s": round(ready_s, 1)}


def run(profile: Profile, replica: bool = True, only: str | None = None) -> dict[str, Any]:
    """Set up, then every scenario, or only the letters of ``only`` (of ONLY_SCENARIOS: "I", "JKL", ...)."""
    started = time.monotonic()
    results: dict[str, Any] = {"profile": profile.name,
                               "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "commit": git_commit(), "loadavg_start": loadavg(), "machine": machine()}
    with ExitStack() as stack:
        setup = prepare(stack, profile)
        env, dsn, service = setup.env, setup.dsn, setup.service
        results["versions"] = versions(dsn)
        results.update(setup.seed)
        results["workers"] = len(service.workers())
        load = Load(env, profile)

        log(f"warming up ({profile.warm_up_seconds} s of mixed traffic)")
        load.wrk(service.url, "mixed.lua", profile.warm_up_seconds, counts=False)

        scenarios: dict[str, Any] = {}

        conditions = Conditions(dsn, service.process.pid,
                                None if os.environ.get("BENCH_DATABASE_URL") else postmaster_pid(dsn))
        if only is None:
            results.update(ledger_scenarios(setup, load, profile, conditions, scenarios, replica))
        for letter, scenario in (("J", filtered_pages), ("K", exports), ("L", usage_summaries),
                                 ("M", batch_spends), ("I", webhook_spends)):
            if only is None or letter in only:
                results.update(scenario(setup, load, profile, conditions, scenarios))

        sound = subprocess.run([PYTHON, "-m", "bench.seed", "--check"], cwd=REPO, env=env,
                               capture_output=True, text=True)
        results["ledger_sound_after"] = sound.returncode == 0
        if sound.returncode != 0:
            log("the ledger's invariants do not hold after the run:\n" + sound.stdout)
        results["service_errors_logged"] = errors_logged(setup.workdir / "service.log")
        results["scenarios"] = scenarios
    results["loadavg_end"] = loadavg()
    results["targets"] = {key: verdict(results[key], comparison, bound) for key, comparison, bound in TARGETS
                          if key in results}
    results["total_s"] = round(time.monotonic() - started, 1)
    return results


def ledger_scenarios(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                     scenarios: dict[str, Any], replica: bool) -> dict[str, Any]:
    """Scenarios A to H, right after the warm-up."""
    workdir, env, dsn, service = setup.workdir, setup.env, setup.dsn, setup.service
    scripts, deep_cursor = setup.spend_scripts, setup.deep_cursor
    heavy, light = setup.tokens["heavy"], setup.tokens["light"]
    rss_before = {pid: rss_mb(pid) for pid in service.workers()}
    seconds, rounds = profile.seconds, profile.rounds
    latency_seconds, latency_rounds = profile.latency_seconds, profile.latency_rounds
    results: dict[str, Any] = {}

    log("A: POST spend vs pgbench running the minimal SQL")
    before = conditions.snapshot()
    spend = paired(
        rounds,
        lambda: load.pgbench(dsn, scripts, seconds, "simple"),
        lambda: load.wrk(service.url + "/api/transactions", "spend.lua", seconds),
    )
    prepared = load.pgbench(dsn, scripts, seconds, "prepared") if profile.name == "full" else None
    scenarios["A"] = {**conditions.between(before, conditions.snapshot()), **spend.slices()}
    post_rps, pgbench_tps = throughput(spend.subject), throughput(spend.reference)
    results.update(post_rps=round(post_rps, 1), pgbench_tps=round(pgbench_tps, 1),
                   post_ratio=round(post_rps / pgbench_tps, 3), post_p50_ms=round(median_latency(spend.subject), 2),
                   pgbench_latency_ms=round(statistics.mean(run.mean_ms for run in spend.reference), 2),
                   pgbench_prepared_tps=round(prepared.rps, 1) if prepared else None,
                   post_errors=sum(run.errors for run in spend.subject),
                   pgbench_failed=sum(run.errors for run in spend.reference))

    log("B: first page of the 200,000-row user vs a bare Flask endpoint")
    before = conditions.snapshot()
    page_url = f"{service.url}/api/transactions?limit={PAGE_SIZE}"
    with gunicorn("bench.bare_app:app", env, workdir / "bare.log", "/api/transactions") as bare:
        load.wrk(bare.url + "/api/transactions", "get.lua", 3, counts=False)
        page = paired(
            rounds,
            lambda: load.wrk(bare.url + f"/api/transactions?limit={PAGE_SIZE}", "get.lua", seconds, counts=False,
                             headers=bearer(heavy)),
            lambda: load.wrk(page_url, "get.lua", seconds, headers=bearer(heavy)),
        )
    scenarios["B"] = {**conditions.between(before, conditions.snapshot()), **page.slices()}
    page_rps, bare_rps = throughput(page.subject), throughput(page.reference)
    results.update(page_rps=round(page_rps, 1), bare_rps=round(bare_rps, 1),
                   page_ratio=round(page_rps / bare_rps, 3), page_errors=page.errors)

    log("C: page 5,000 (by cursor) vs the first page, one connection")
    before = conditions.snapshot()
    deep = paired(
        latency_rounds,
        lambda: load.wrk(page_url, "get.lua", latency_seconds, connections=1, headers=bearer(heavy)),
        lambda: load.wrk(f"{page_url}&cursor={deep_cursor}", "get.lua", latency_seconds, connections=1,
                         headers=bearer(heavy)),
    )
    scenarios["C"] = {**conditions.between(before, conditions.snapshot()), **deep.slices()}
    first_ms, deep_ms = median_latency(deep.reference), median_latency(deep.subject)
    results.update(first_page_ms=round(first_ms, 3), deep_page_ms=round(deep_ms, 3),
                   deep_ratio=round(deep_ms / first_ms, 3), deep_errors=deep.errors)

    log("D: balance of the 200,000-row user vs a 10-row user, one connection")
    before = conditions.snapshot()
    balance = paired(
        latency_rounds,
        lambda: load.wrk(service.url + "/api/balance", "get.lua", latency_seconds, connections=1,
                         headers=bearer(light)),
        lambda: load.wrk(service.url + "/api/balance", "get.lua", latency_seconds, connections=1,
                         headers=bearer(heavy)),
    )
    scenarios["D"] = {**conditions.between(before, conditions.snapshot()), **balance.slices()}
    light_ms, heavy_ms = median_latency(balance.reference), median_latency(balance.subject)
    results.update(balance_light_ms=round(light_ms, 3), balance_heavy_ms=round(heavy_ms, 3),
                   balance_ratio=round(heavy_ms / light_ms, 3), balance_errors=balance.errors)

    log("E: mixed traffic, maximum throughput, then latency at half of it (open loop)")
    before = conditions.snapshot()
    mixed = load.wrk(service.url, "mixed.lua", profile.mixed_seconds)
    middle = conditions.snapshot()
    half = load.openloop(service.url, workdir / "data.json", mixed.rps / 2, profile.mixed_seconds)
    scenarios["E"] = {**conditions.between(before, middle), "open_loop": half,
                      "open_loop_conditions": conditions.between(middle, conditions.snapshot())}
    results.update(mixed_rps=round(mixed.rps, 1), mixed_errors=mixed.errors + half["non_2xx"],
                   mixed_rate=half["rate"], mixed_achieved_rps=half["achieved_rps"],
                   mixed_p50_ms=half["p50_ms"], mixed_p95_ms=half["p95_ms"], mixed_p99_ms=half["p99_ms"],
                   mixed_closed_loop_p99_ms=round(mixed.p99_ms, 2),
                   openloop_lag_p99_ms=half["lag_p99_ms"], openloop_cpu_share=half["generator_cpu_share"])

    log(f"F: worker memory after {profile.rss_requests:,} requests (served so far: {load.served:,})")
    for _ in range(5):
        missing = profile.rss_requests - load.served
        if missing <= 0:
            break
        load.wrk(service.url, "mixed.lua", min(600, missing / max(mixed.rps, 1) * 1.1 + 1))
    rss_after = {pid: rss_mb(pid) for pid in service.workers()}
    if set(rss_after) != set(rss_before):
        log(f"workers changed during the run: {sorted(rss_before)} -> {sorted(rss_after)}")
    common = [pid for pid in rss_before if pid in rss_after]
    results.update(
        rss_growth=round(max(rss_after[pid] / rss_before[pid] for pid in common), 3),
        rss_before_mb=[round(rss_before[pid], 1) for pid in common],
        rss_after_mb=[round(rss_after[pid], 1) for pid in common],
        rss_requests=load.served,
    )

    if replica and os.environ.get("BENCH_DATABASE_URL"):
        log("B on a replica: skipped, BENCH_DATABASE_URL names a server this run cannot copy")
    elif replica:
        scenarios["B_replica"], measured = replica_page(setup, load, conditions, profile)
        results.update(measured)

    results.update(pooled_vs_direct(setup, load, profile, conditions, scenarios))
    results.update(lot_spends(setup, load, profile, conditions, scenarios))
    return results


def pooled_vs_direct(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                     scenarios: dict[str, Any]) -> dict[str, Any]:
    """G: scenarios A and B served through PgBouncer (transaction mode) beside the direct service.

    A second gunicorn, configured as a fleet behind the pooler is (``DATABASE_CONNECT_OPTIONS=false``,
    the timeouts on the role), reaches the same database through a PgBouncer with a pool smaller than
    the load's connections; the direct service is measured again in alternating slices.
    """
    rounds = max(2, profile.rounds // 2)
    role, database_name = make_url(setup.dsn).username or "postgres", make_url(setup.dsn).database
    with psycopg2.connect(setup.dsn) as connection, connection.cursor() as cursor:
        for setting, value in (("statement_timeout", STATEMENT_TIMEOUT_MS), ("lock_timeout", LOCK_TIMEOUT_MS)):
            cursor.execute(f'ALTER ROLE "{role}" IN DATABASE "{database_name}" SET {setting} = \'{value}ms\'')
    connection.close()
    pooler = PgBouncer(setup.workdir / "pgbouncer", setup.dsn, pool_size=POOLER_POOL_SIZE).start()
    try:
        (setup.workdir / "metrics-pooled").mkdir()
        pooled_env = {**setup.env, "DATABASE_URL": pooler.url(setup.env["DATABASE_URL"]),
                      "DATABASE_CONNECT_OPTIONS": "false",
                      "PROMETHEUS_MULTIPROC_DIR": str(setup.workdir / "metrics-pooled")}
        log(f"G: A and B through PgBouncer (transaction mode, {POOLER_POOL_SIZE} server connections) vs direct")
        with gunicorn("wsgi:app", pooled_env, setup.workdir / "pooled.log", "/readyz") as pooled:
            conditions = AlsoOwnConditions(conditions, [pooled.process.pid, pooler.process.pid])
            heavy = bearer(setup.tokens["heavy"])
            load.wrk(pooled.url, "mixed.lua", 3, counts=False)
            before = conditions.snapshot()
            spend = paired(
                rounds,
                lambda: load.wrk(setup.service.url + "/api/transactions", "spend.lua", profile.seconds),
                lambda: load.wrk(pooled.url + "/api/transactions", "spend.lua", profile.seconds, counts=False),
            )
            page = paired(
                rounds,
                lambda: load.wrk(f"{setup.service.url}/api/transactions?limit={PAGE_SIZE}", "get.lua",
                                 profile.seconds, headers=heavy),
                lambda: load.wrk(f"{pooled.url}/api/transactions?limit={PAGE_SIZE}", "get.lua", profile.seconds,
                                 headers=heavy, counts=False),
            )
            scenarios["G"] = {**conditions.between(before, conditions.snapshot()),
                              "post": spend.slices(), "page": page.slices()}
        pooled_errors_logged = errors_logged(setup.workdir / "pooled.log")
    finally:
        pooler.stop()
    pooled_post, direct_post = throughput(spend.subject), throughput(spend.reference)
    pooled_page, direct_page = throughput(page.subject), throughput(page.reference)
    return {
        "pooled_post_rps": round(pooled_post, 1), "pooled_direct_post_rps": round(direct_post, 1),
        "pooled_post_ratio": round(pooled_post / direct_post, 3),
        "pooled_post_p50_ms": round(median_latency(spend.subject), 2),
        "pooled_direct_post_p50_ms": round(median_latency(spend.reference), 2),
        "pooled_page_rps": round(pooled_page, 1), "pooled_direct_page_rps": round(direct_page, 1),
        "pooled_page_ratio": round(pooled_page / direct_page, 3),
        "pooled_page_p50_ms": round(median_latency(page.subject), 2),
        "pooled_direct_page_p50_ms": round(median_latency(page.reference), 2),
        "pooled_errors": spend.errors + page.errors, "pooled_service_errors_logged": pooled_errors_logged,
        "pooled_pool_size": POOLER_POOL_SIZE,
    }


def lot_spends(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
               scenarios: dict[str, Any]) -> dict[str, Any]:
    """H: spends by users with five usable lots against spends by users with one, in alternating slices.

    Each one-lot user has one purchase of TOP_UP_CREDITS; each five-lot user a purchase and four grants
    of a fifth of that, the grants first in the spend order, so that a spend of 1 credit locks five lots
    and draws on one. The users are new (registered here), so no earlier scenario saw them.
    """
    api = setup.service.url + "/api"
    payment = bearer(setup.tokens["payment"])
    growth = bearer(api_key(setup.env, "growth-service", "credits:grant transactions:read"))
    one, five = setup.lot_holders["lots_one"], setup.lot_holders["lots_five"]
    log(f"H: spends by {len(five)} users with five lots vs {len(one)} with one")
    for user in one + five:
        requests.put(f"{api}/users/{user}", headers=payment, timeout=30).raise_for_status()
    for user in one:
        top_up(api, payment, user, TOP_UP_CREDITS)
    share = TOP_UP_CREDITS // 5
    for user in five:
        top_up(api, payment, user, share)
        for priority in GRANT_PRIORITIES:
            top_up(api, growth, user, share, "grant", priority=priority, expires_in=GRANT_EXPIRES_IN,
                   category="promotional")
    url = setup.service.url + "/api/transactions"
    before = conditions.snapshot()
    spends = paired(
        profile.rounds,
        lambda: load.wrk(url, "spend.lua", profile.seconds, args=("lots_one",)),
        lambda: load.wrk(url, "spend.lua", profile.seconds, args=("lots_five",)),
    )
    scenarios["H"] = {**conditions.between(before, conditions.snapshot()), **spends.slices()}
    one_rps, five_rps = throughput(spends.reference), throughput(spends.subject)
    return {"lots_one_rps": round(one_rps, 1), "lots_five_rps": round(five_rps, 1),
            "lots_five_ratio": round(five_rps / one_rps, 3), "lots_errors": spends.errors}


def batch_scripts(setup: Prepared, api: str, many: list[str], hot: list[str]) -> list[Path]:
    """M's users registered, each with one purchase of TOP_UP_CREDITS, and pgbench's fixed batches drawn
    over them, each with the service's own answer to a spend as the body its records keep."""
    payment = bearer(setup.tokens["payment"])
    for user in many + hot:
        requests.put(f"{api}/users/{user}", headers=payment, timeout=30).raise_for_status()
    purchases = [{"user_id": user, "type": "purchase", "amount": "0", "credits": TOP_UP_CREDITS,
                  "description": "Benchmark top-up", "idempotency_key": f"{setup.run_id}-batch-top-up-{user}"}
                 for user in many + hot]
    for start in range(0, len(purchases), BATCH_SIZE):
        requests.post(f"{api}/transactions/batch", json={"items": purchases[start:start + BATCH_SIZE]},
                      headers=payment, timeout=60).raise_for_status()
    sample = requests.post(f"{api}/transactions/batch", headers=bearer(setup.tokens["generation"]), timeout=30, json={
        "items": [{"user_id": many[0], "type": "usage", "amount": "0", "credits": -1,
                   "description": "Image generation (1024x1024)", "idempotency_key": f"{setup.run_id}-batch-sample"}]})
    sample.raise_for_status()
    shown = json.dumps(sample.json()["results"][0]["transaction"], separators=(",", ":"))
    rng = random.Random(setup.run_id)
    scripts = []
    for index in range(BATCH_SCRIPTS):
        script = setup.workdir / f"batch-{index:02d}.sql"
        script.write_text(pgbench_batch_script(batch_draw(many, hot, rng), setup.run_id, shown))
        scripts.append(script)
    return scripts


def batch_spends(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                 scenarios: dict[str, Any]) -> dict[str, Any]:
    """M: spends in batches of 100 through POST /api/transactions/batch, beside pgbench running the least
    batched SQL (``pgbench_batch_script``) and beside single spends (A's), in interleaved slices.

    The users are new (registered here), each with one purchase of TOP_UP_CREDITS; A's single spends
    are for A's spenders. Every batch's items are checked to have been recorded, one row each.
    """
    api = setup.service.url + "/api"
    many, hot = setup.batch_users["batch_users"], setup.batch_users["batch_hot"]
    log(f"M: batches of {BATCH_SIZE} spends over {len(many):,} users and {len(hot)} hot ones")
    scripts = batch_scripts(setup, api, many, hot)

    def recorded() -> int:
        """The usage rows of M's users, as many as the batches were answered for."""
        with psycopg2.connect(setup.dsn) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM user_transactions WHERE user_id = ANY(%s::uuid[]) AND type = 'usage'",
                           (many + hot,))
            (rows,) = cursor.fetchone()
        connection.close()
        return rows

    recorded_before = recorded()
    batches_url, single_url = f"{api}/transactions/batch", f"{api}/transactions"
    before = conditions.snapshot()
    runs = interleaved(profile.rounds, {
        "pgbench": lambda: load.pgbench(setup.dsn, scripts, profile.seconds, "simple"),
        "batch": lambda: load.wrk(batches_url, "batch.lua", profile.seconds),
        "single": lambda: load.wrk(single_url, "spend.lua", profile.seconds),
    })
    scenarios["M"] = {**conditions.between(before, conditions.snapshot()),
                      **{f"{name}_rps": [round(run.rps, 1) for run in measured] for name, measured in runs.items()}}
    recorded_after = recorded()
    sent = sum(run.requests for run in runs["batch"] + runs["pgbench"]) * BATCH_SIZE
    batch_rps = throughput(runs["batch"]) * BATCH_SIZE
    pgbench_rps = throughput(runs["pgbench"]) * BATCH_SIZE
    single_rps = throughput(runs["single"])
    return {"batch_rps": round(batch_rps, 1), "pgbench_batch_tps": round(pgbench_rps, 1),
            "batch_single_rps": round(single_rps, 1), "batch_ratio": round(batch_rps / pgbench_rps, 3),
            "batch_vs_single": round(batch_rps / single_rps, 2),
            "batch_p50_ms": round(median_latency(runs["batch"]), 2),
            # Batches in flight when a slice ends are applied but not counted: more recorded than sent is not amiss.
            "batch_items_missing": max(0, sent - (recorded_after - recorded_before)),
            "batch_errors": sum(run.errors for measured in runs.values() for run in measured)}


def interleaved(rounds: int, measures: dict[str, Callable[[], Measured]]) -> dict[str, list[Measured]]:
    """Each of ``measures`` once a round, ``rounds`` times, the order reversed every other round (as ``paired``)."""
    result: dict[str, list[Measured]] = {name: [] for name in measures}
    for round_number in range(rounds):
        names = list(measures) if round_number % 2 == 0 else list(reversed(measures))
        for name in names:
            result[name].append(measures[name]())
    return result


def heavy_filters(dsn: str) -> dict[str, dict[str, str]]:
    """J's filters, on rows the 200,000-row user has: a metadata pair, a purchase's reference, an interval."""
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT reference FROM user_transactions WHERE user_id = %s AND type = 'purchase' AND reference IS NOT NULL"
            " ORDER BY created_at LIMIT 1 OFFSET (SELECT count(*) / 2 FROM user_transactions WHERE user_id = %s"
            " AND type = 'purchase' AND reference IS NOT NULL)",
            (str(HEAVY_USER), str(HEAVY_USER)),
        )
        reference = cursor.fetchone()[0]
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
    connection.close()
    oldest, newest = FILTER_INTERVAL_DAYS
    interval = {"created_after": (now - timedelta(days=oldest)).isoformat(),
                "created_before": (now - timedelta(days=newest)).isoformat()}
    return {"metadata": {"metadata[model]": FILTER_MODEL}, "reference": {"reference": reference},
            "interval": interval}


def filtered_pages(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                   scenarios: dict[str, Any]) -> dict[str, Any]:
    """J: a page of the 200,000-row user filtered three ways, beside the unfiltered first page (B's subject).

    The four in turn each round, at B's concurrency; each filter's ratio is its throughput over the
    unfiltered page's in the same rounds. A reference finds one row (it is unique per user and type),
    the others a full page of 20.
    """
    heavy = bearer(setup.tokens["heavy"])
    page_url = f"{setup.service.url}/api/transactions?limit={PAGE_SIZE}"
    urls = {"unfiltered": page_url, **{name: f"{page_url}&{urlencode(query)}"
                                       for name, query in heavy_filters(setup.dsn).items()}}
    rows = {}
    for name, url in urls.items():
        response = requests.get(url, headers=heavy, timeout=30)
        response.raise_for_status()
        rows[name] = len(response.json()["data"])
    if rows["reference"] != 1 or min(rows.values()) == 0:
        raise RuntimeError(f"J's filtered pages are not what the seed holds: {rows}")
    log("J: filtered pages of the 200,000-row user (metadata pair, reference, interval) vs the unfiltered page")
    for url in urls.values():  # each statement's first plan and pages, before any slice counts
        load.wrk(url, "get.lua", 1, counts=False, headers=heavy)
    before = conditions.snapshot()
    measured = interleaved(profile.rounds, {
        name: (lambda url=url: load.wrk(url, "get.lua", profile.seconds, headers=heavy)) for name, url in urls.items()})
    scenarios["J"] = {**conditions.between(before, conditions.snapshot()), "page_rows": rows,
                      **{f"{name}_rps": [round(run.rps, 1) for run in runs] for name, runs in measured.items()}}
    unfiltered = throughput(measured["unfiltered"])
    results: dict[str, Any] = {"unfiltered_page_rps": round(unfiltered, 1)}
    for name in ("metadata", "reference", "interval"):
        rps = throughput(measured[name])
        results[f"filtered_page_rps_{name}"] = round(rps, 1)
        results[f"filtered_page_ratio_{name}"] = round(rps / unfiltered, 3)
    results["filtered_page_errors"] = sum(run.errors for runs in measured.values() for run in runs)
    return results


class Counted:
    """A file-like sink that keeps only how many bytes and lines went through it."""

    def __init__(self) -> None:
        self.bytes = self.lines = 0

    def write(self, data: bytes | str) -> int:
        chunk = data.encode() if isinstance(data, str) else data
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")
        return len(data)


class Streamed(NamedTuple):
    rows: int
    bytes: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def copy_out(dsn: str, statement: str) -> Streamed:
    """``COPY (statement) TO STDOUT`` as CSV with a header, read to the end by this process."""
    sink = Counted()
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        started = time.monotonic()
        cursor.copy_expert(f"COPY ({statement}) TO STDOUT WITH (FORMAT csv, HEADER)", sink, size=1 << 16)
        seconds = time.monotonic() - started
    connection.close()
    return Streamed(sink.lines - 1, sink.bytes, seconds)


def download(url: str, headers: dict[str, str]) -> Streamed:
    """A CSV export read to its last byte, as a client saving the file would; its rows are its lines less the header."""
    sink = Counted()
    started = time.monotonic()
    with requests.get(url, headers=headers, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 16):
            sink.write(chunk)
    return Streamed(sink.lines - 1, sink.bytes, time.monotonic() - started)


class PeakRss:
    """The highest RSS each of ``pids`` reached while the block ran, read every RSS_SAMPLE_SECONDS."""

    def __init__(self, pids: list[int]) -> None:
        self.peak = {pid: rss_mb(pid) for pid in pids}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(RSS_SAMPLE_SECONDS):
            for pid in self.peak:
                try:
                    self.peak[pid] = max(self.peak[pid], rss_mb(pid))
                except (OSError, RuntimeError):  # a worker that exited: the check on the pids reports it
                    pass

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()


def exports(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
            scenarios: dict[str, Any]) -> dict[str, Any]:
    """K: the 200,000-row user's history as CSV from the export, beside PostgreSQL's own COPY of the same rows.

    Each round one export (one client, read to its last byte) and one ``COPY (SELECT the export's columns
    ... ORDER BY created_at DESC, id DESC) TO STDOUT`` in PostgreSQL's CSV, on a direct connection, read
    by this process; the order alternates. The workers' RSS is sampled throughout; the growth is the
    most any worker rose above what it held just before.
    """
    url = f"{setup.service.url}/api/transactions/export?format=csv"
    heavy = bearer(setup.tokens["heavy"])
    statement = (f"SELECT {', '.join(EXPORT_COLUMNS)} FROM user_transactions WHERE user_id = '{HEAVY_USER}'"
                 " ORDER BY created_at DESC, id DESC")
    workers = setup.service.workers()
    log(f"K: export of the 200,000-row user (CSV) vs COPY TO STDOUT, {profile.rounds} rounds")
    copy_out(setup.dsn, statement)  # the user's pages in the buffer cache for both, before either counts
    before_mb = {pid: rss_mb(pid) for pid in workers}
    before = conditions.snapshot()
    with PeakRss(workers) as rss:
        export = paired(profile.rounds, lambda: copy_out(setup.dsn, statement), lambda: download(url, heavy))
    scenarios["K"] = {**conditions.between(before, conditions.snapshot()),
                      "copy_rows_per_s": [round(run.rows_per_s) for run in export.reference],
                      "export_rows_per_s": [round(run.rows_per_s) for run in export.subject],
                      "rss_before_mb": [round(before_mb[pid], 1) for pid in workers],
                      "rss_peak_mb": [round(rss.peak[pid], 1) for pid in workers]}
    if set(setup.service.workers()) != set(workers):
        log(f"workers changed during K: {workers} -> {setup.service.workers()}")
    rows = {run.rows for run in export.reference + export.subject}
    if len(rows) != 1:
        raise RuntimeError(f"the export and COPY did not give the same number of rows: {sorted(rows)}")

    def rate(runs: list[Streamed]) -> float:
        return sum(run.rows for run in runs) / sum(run.seconds for run in runs)

    export_rate, copy_rate = rate(export.subject), rate(export.reference)
    return {"export_rows": rows.pop(), "export_rows_per_s": round(export_rate), "copy_rows_per_s": round(copy_rate),
            "export_ratio": round(export_rate / copy_rate, 3),
            "export_mb": round(export.subject[0].bytes / 1e6, 1), "copy_mb": round(export.reference[0].bytes / 1e6, 1),
            "export_rss_growth_mb": round(max(rss.peak[pid] - before_mb[pid] for pid in workers), 1)}


def usage_summaries(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                    scenarios: dict[str, Any]) -> dict[str, Any]:
    """L: the 200,000-row user's 30-day usage summary by model, beside the 10-row user's, one connection (as D)."""
    url = f"{setup.service.url}/api/usage/summary?{urlencode(SUMMARY_QUERY)}"
    heavy, light = bearer(setup.tokens["heavy"]), bearer(setup.tokens["light"])
    summary = requests.get(url, headers=heavy, timeout=30)
    summary.raise_for_status()
    with psycopg2.connect(setup.dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_rollup WHERE user_id = %s AND grain = 15 AND period >= %s",
                       (str(HEAVY_USER), summary.json()["buckets"][0]["starts_at"]))
        rollup_rows = cursor.fetchone()[0]
    connection.close()
    log(f"L: 30-day usage summary by model, 200,000-row user ({rollup_rows:,} rollup rows) vs 10-row user, one connection")
    before = conditions.snapshot()
    measured = paired(
        profile.latency_rounds,
        lambda: load.wrk(url, "get.lua", profile.latency_seconds, connections=1, headers=light),
        lambda: load.wrk(url, "get.lua", profile.latency_seconds, connections=1, headers=heavy),
    )
    scenarios["L"] = {**conditions.between(before, conditions.snapshot()), **measured.slices()}
    light_ms, heavy_ms = median_latency(measured.reference), median_latency(measured.subject)
    return {"summary_light_ms": round(light_ms, 3), "summary_heavy_ms": round(heavy_ms, 3),
            "summary_heavy_vs_light": round(heavy_ms / light_ms, 3),
            "summary_heavy_credits": summary.json()["total"], "summary_heavy_rollup_rows": rollup_rows,
            "summary_errors": measured.errors}


class Backlog(NamedTuple):
    """What the webhook worker has still to do: feed events it has not fanned out, deliveries not yet made."""

    unqueued_events: int
    pending_deliveries: int


def webhook_backlog(dsn: str) -> Backlog:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM ledger_events AS e, event_relays AS r WHERE r.name = %(name)s"
            "  AND (e.xid, e.position) > (r.after_xid::text::xid8, r.after_position)),"
            " (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')",
            {"name": FAN_OUT},
        )
        backlog = Backlog(*cursor.fetchone())
    connection.close()
    return backlog


def wait_for_webhooks(dsn: str, timeout: float) -> float | None:
    """Seconds until the worker had fanned out every event and made every delivery; None if not in ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if webhook_backlog(dsn) == (0, 0):
            return round(time.monotonic() - started, 1)
        time.sleep(0.25)
    return None


def fan_out_from_feed_end(dsn: str) -> None:
    """Put the worker's fan-out after the feed's last event, where a worker running all along would be.

    The events of the scenarios before I are not I's to deliver, and paging through them (the fan-out's
    first position is the feed's start) would keep the worker busy while I measures. Nothing writes now.
    """
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO event_relays (name, after_xid, after_position)"
            " SELECT %(name)s, xid::text::bigint, position FROM ledger_events ORDER BY xid DESC, position DESC LIMIT 1"
            " ON CONFLICT (name) DO UPDATE SET after_xid = excluded.after_xid, after_position = excluded.after_position,"
            " updated_at = now()",
            {"name": FAN_OUT},
        )
    connection.close()


def webhook_spends(setup: Prepared, load: Load, profile: Profile, conditions: Conditions,
                   scenarios: dict[str, Any]) -> dict[str, Any]:
    """I: spends with one webhook endpoint subscribed against none, then the time from commit to receiver.

    A receiver in this process (bench/receiver.py) verifies every delivery's signature, answers 204 and
    notes when each arrived; one worker, ``flask webhooks work`` with the production settings (but http to
    this machine), delivers to it; the endpoint is registered through the API, subscribed to the events a
    spend can emit.

    1. Scenario A's spends (its users, wrk) in alternating slices with the endpoint enabled and disabled
       (PATCH ``disabled``). The worker runs in both halves: production runs it whether or not anyone
       subscribes, so the question is what a subscriber costs (queueing, posting and recording each
       delivery, and the receiver's share of the same cores), not what a process reading the feed costs;
       with the endpoint disabled the worker still fans out every event, queuing nothing. Deliveries
       an enabled slice leaves pending wait, while the endpoint is disabled, for the next enabled slice,
       so all the delivering happens in enabled slices.
    2. With the endpoint enabled and nothing left to deliver, bench/openloop.py sends the same spends at
       half the enabled rate for E's duration and notes, for each 201, when its last byte arrived: the
       commit was then acknowledged. A spend's latency is the first arrival at the receiver of its
       transaction's ``transaction.created`` (matched by the transaction id in the event's data) less
       that, both read with ``time.time()``, the one clock the two processes share; the generator reads
       it when its loop gets there (its lag), so a latency can come out a few ms short, even below 0,
       as can one whose event really overtook the 201. An event not received within
       WEBHOOK_GRACE_SECONDS of the last 201 is missing; a webhook-id received again (at least once
       allows it), anywhere in I, is a duplicate.
    """
    api = setup.service.url + "/api"
    spend_url = api + "/transactions"
    worker_log = setup.workdir / "webhooks.log"
    manager = bearer(api_key(setup.env, "webhooks-admin", MANAGE_WEBHOOKS))
    fan_out_from_feed_end(setup.dsn)
    with ExitStack() as stack:
        receiver = Receiver()
        stack.callback(receiver.stop)  # after the worker has stopped: its last deliveries are answered
        created = requests.post(f"{api}/webhook-endpoints", headers=manager, timeout=30, json={
            "url": receiver.url, "event_types": WEBHOOK_EVENT_TYPES, "description": "Benchmark receiver"})
        created.raise_for_status()
        endpoint = created.json()
        receiver.start(endpoint["secret"])
        worker = stack.enter_context(webhook_worker(setup.env, worker_log))
        measured = AlsoOwnConditions(conditions, [worker.pid])

        def subscribe(enabled: bool) -> None:
            requests.patch(f"{api}/webhook-endpoints/{endpoint['id']}", json={"disabled": not enabled},
                           headers=manager, timeout=30).raise_for_status()

        log("I: the webhook worker and receiver: a first delivery")
        load.wrk(spend_url, "spend.lua", 2, counts=False)
        if wait_for_webhooks(setup.dsn, WEBHOOK_DRAIN_SECONDS) is None or not receiver.received():
            raise RuntimeError(f"the webhook worker delivered nothing to the receiver; see {worker_log}:\n"
                               + worker_log.read_text(errors="replace")[-3000:])
        beside: list[dict[str, Any]] = []

        def spends(enabled: bool) -> Measured:
            """One slice; what the worker and the receiver (this process, otherwise idle) did beside it."""
            subscribe(enabled)
            received, worker_cpu, own = receiver.received(), tree_cpu_seconds(worker.pid), own_cpu_seconds()
            spent = load.wrk(spend_url, "spend.lua", profile.seconds)
            delivered = receiver.received() - received
            beside.append({"enabled": enabled, "delivered": delivered,
                           "delivered_rps": round(delivered / spent.seconds, 1),
                           "worker_cores": round((tree_cpu_seconds(worker.pid) - worker_cpu) / spent.seconds, 2),
                           "receiver_cores": round((own_cpu_seconds() - own) / spent.seconds, 2),
                           **webhook_backlog(setup.dsn)._asdict()})
            return spent

        log(f"I: spends with one webhook endpoint vs none ({profile.rounds} rounds of {profile.seconds} s)")
        before = measured.snapshot()
        spend = paired(profile.rounds, lambda: spends(False), lambda: spends(True))
        spend_conditions = measured.between(before, measured.snapshot())
        subscribe(True)
        pending = webhook_backlog(setup.dsn).pending_deliveries
        drain_s = wait_for_webhooks(setup.dsn, WEBHOOK_DRAIN_SECONDS)
        if drain_s is None:
            log(f"I: the worker had not delivered the slices' events after {WEBHOOK_DRAIN_SECONDS} s; "
                "the latency below includes them")
        with_rps, without_rps = throughput(spend.subject), throughput(spend.reference)

        log(f"I: commit to receiver at {with_rps / 2:,.0f} spends/s, open loop, {profile.mixed_seconds} s")
        acks_path = setup.workdir / "webhook-acks.json"
        before = measured.snapshot()
        half = load.openloop(setup.service.url, setup.workdir / "data.json", with_rps / 2, profile.mixed_seconds,
                             mix="spend", name="webhooks", acks=acks_path)
        acks = json.loads(acks_path.read_text())
        outstanding = [transaction_id for _, transaction_id in acks]
        deadline = time.monotonic() + WEBHOOK_GRACE_SECONDS
        while outstanding and time.monotonic() < deadline:
            time.sleep(0.2)
            outstanding = [transaction_id for transaction_id in outstanding
                           if transaction_id is None or receiver.first_arrival(transaction_id) is None]
        open_loop_conditions = measured.between(before, measured.snapshot())
        latencies = [(arrived - acknowledged) * 1000 for acknowledged, transaction_id in acks
                     if transaction_id is not None and (arrived := receiver.first_arrival(transaction_id)) is not None]
        duplicates, refused = receiver.duplicates(), receiver.refused
    scenarios["I"] = {**spend_conditions, **spend.slices(), "beside_slices": beside, "drain_s": drain_s,
                      "drain_rps": round(pending / drain_s, 1) if drain_s else None,
                      "open_loop": half, "open_loop_conditions": open_loop_conditions,
                      "latency_min_ms": finite(min(latencies, default=math.nan), 1),
                      "latency_max_ms": finite(max(latencies, default=math.nan), 1)}
    return {
        "webhook_spend_rps": round(with_rps, 1), "webhook_none_rps": round(without_rps, 1),
        "webhook_spend_ratio": round(with_rps / without_rps, 3), "webhook_rate": half["rate"],
        # Of the enabled slices' spends, the share the worker delivered in them: below 1, it fell behind,
        # and the ratio is the cost of what it managed.
        "webhook_spend_delivered_share": round(sum(part["delivered"] for part in beside if part["enabled"])
                                               / sum(run.requests for run in spend.subject), 3),
        "webhook_achieved_rps": half["achieved_rps"],
        "webhook_latency_p50_ms": finite(percentile(latencies, 0.50), 1),
        "webhook_latency_p99_ms": finite(percentile(latencies, 0.99), 1),
        "webhook_delivered": len(latencies), "webhook_missing": len(acks) - len(latencies),
        "webhook_duplicates": duplicates, "webhook_bad_signatures": refused,
        "webhook_errors": spend.errors + half["non_2xx"], "webhook_worker_errors_logged": errors_logged(worker_log),
    }


def verdict(value: float | None, comparison: str, bound: float) -> bool:
    """Whether ``value`` meets the target; no value (nothing was measured) does not."""
    if value is None:
        return False
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[comparison]


def table(results: dict[str, Any]) -> str:
    target = {key: f"{comparison} {bound:g}" for key, comparison, bound in TARGETS}

    def mark(key: str) -> str:
        return "hit" if results["targets"][key] else "MISSED"

    r = results
    ledger = "post_rps" in r  # A to H ran (not --only)
    rows = [] if not ledger else [
        ("A spend: POST /api/transactions", f"{r['post_rps']:,.0f} req/s",
         f"pgbench {r['pgbench_tps']:,.0f} tps", "post_ratio", r["post_ratio"]),
        ("B first page, 200k-row user", f"{r['page_rps']:,.0f} req/s",
         f"bare Flask {r['bare_rps']:,.0f} req/s", "page_ratio", r["page_ratio"]),
        ("C page 5,000 by cursor (1 conn)", f"p50 {r['deep_page_ms']:.2f} ms",
         f"first page p50 {r['first_page_ms']:.2f} ms", "deep_ratio", r["deep_ratio"]),
        ("D balance, 200k rows (1 conn)", f"p50 {r['balance_heavy_ms']:.2f} ms",
         f"10 rows p50 {r['balance_light_ms']:.2f} ms", "balance_ratio", r["balance_ratio"]),
        ("E mixed 80/15/5, open loop", f"p99 {r['mixed_p99_ms']:.1f} ms at {r['mixed_rate']:,.0f}/s",
         f"max {r['mixed_rps']:,.0f} req/s", "mixed_p99_ms", r["mixed_p99_ms"]),
        ("F worker RSS after requests", f"{max(r['rss_after_mb']):.0f} MB max",
         f"{max(r['rss_before_mb']):.0f} MB warm", "rss_growth", r["rss_growth"]),
        ("H spend, user with five lots", f"{r['lots_five_rps']:,.0f} req/s",
         f"one lot {r['lots_one_rps']:,.0f} req/s", "lots_five_ratio", r["lots_five_ratio"]),
    ]
    if "unfiltered_page_rps" in r:
        rows += [(f"J page filtered by {label}", f"{r[f'filtered_page_rps_{name}']:,.0f} req/s",
                  f"unfiltered {r['unfiltered_page_rps']:,.0f} req/s", f"filtered_page_ratio_{name}",
                  r[f"filtered_page_ratio_{name}"])
                 for name, label in (("metadata", "metadata[model]"), ("reference", "reference"),
                                     ("interval", "created_after/before"))]
    if "export_ratio" in r:
        rows += [
            (f"K CSV export, {r['export_rows']:,} rows", f"{r['export_rows_per_s']:,.0f} rows/s",
             f"COPY TO STDOUT {r['copy_rows_per_s']:,.0f} rows/s", "export_ratio", r["export_ratio"]),
            ("K worker RSS during the export", f"+{r['export_rss_growth_mb']:g} MB", "before it",
             "export_rss_growth_mb", r["export_rss_growth_mb"]),
        ]
    if "summary_heavy_vs_light" in r:
        rows.append(("L 30-day usage summary (1 conn)", f"p50 {r['summary_heavy_ms']:.2f} ms",
                     f"10 rows p50 {r['summary_light_ms']:.2f} ms", "summary_heavy_vs_light",
                     r["summary_heavy_vs_light"]))
    if "batch_ratio" in r:
        rows += [
            (f"M batches of {BATCH_SIZE} spends", f"{r['batch_rps']:,.0f} items/s",
             f"pgbench {r['pgbench_batch_tps']:,.0f} items/s", "batch_ratio", r["batch_ratio"]),
            ("M batches against single spends", f"{r['batch_rps']:,.0f} items/s",
             f"single {r['batch_single_rps']:,.0f} req/s", "batch_vs_single", r["batch_vs_single"]),
        ]
    webhooks = r["scenarios"].get("I")
    if webhooks is not None:
        rows += [
            ("I spend, one webhook endpoint", f"{r['webhook_spend_rps']:,.0f} req/s",
             f"disabled {r['webhook_none_rps']:,.0f} req/s", "webhook_spend_ratio", r["webhook_spend_ratio"]),
            ("I commit to webhook, open loop", f"p99 {r['webhook_latency_p99_ms']} ms at {r['webhook_rate']:,.0f}/s",
             f"p50 {r['webhook_latency_p50_ms']} ms", "webhook_latency_p99_ms", r["webhook_latency_p99_ms"]),
        ]
    header = ("scenario", "measured", "reference", "key", "value", "target", "")
    lines = [header] + [(name, measured, reference, key, "none" if value is None else f"{value:g}", target[key],
                         mark(key)) for name, measured, reference, key, value in rows]
    widths = [max(len(str(line[column])) for line in lines) for column in range(len(header))]
    text = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    text.append("")
    if ledger:
        text.append(
            f"E at {r['mixed_rate']:,.0f} req/s: p50 {r['mixed_p50_ms']} ms, p95 {r['mixed_p95_ms']} ms, "
            f"p99 {r['mixed_p99_ms']} ms (generator lag p99 {r['openloop_lag_p99_ms']} ms, "
            f"generator CPU {r['openloop_cpu_share']:.0%} of a core)"
        )
    if r.get("pooled_post_rps") is not None:
        text.append(
            f"G through PgBouncer, transaction mode, {r['pooled_pool_size']} server connections (vs direct, same slices): "
            f"A {r['pooled_post_rps']:,.0f} req/s vs {r['pooled_direct_post_rps']:,.0f} ({r['pooled_post_ratio']:g}), "
            f"p50 {r['pooled_post_p50_ms']} vs {r['pooled_direct_post_p50_ms']} ms; "
            f"B {r['pooled_page_rps']:,.0f} req/s vs {r['pooled_direct_page_rps']:,.0f} ({r['pooled_page_ratio']:g}), "
            f"p50 {r['pooled_page_p50_ms']} vs {r['pooled_direct_page_p50_ms']} ms"
        )
    if r.get("pgbench_prepared_tps"):
        text.append(f"A with pgbench -M prepared (not reachable through a transaction-mode pooler): "
                    f"{r['pgbench_prepared_tps']:,.0f} tps")
    if "replica_page_rps" in r:
        text.append(f"B from a streaming replica: {r['replica_page_rps']:,.0f} req/s against {r['primary_page_rps']:,.0f} "
                    f"from the primary in the same slices (replica_page_ratio {r['replica_page_ratio']:g}); "
                    f"replica made and caught up in {r['replica_ready_s']} s, "
                    f"{r['replica_fallbacks_logged']} fallbacks to the primary")
    if "export_ratio" in r:
        text.append(f"K: the export {r['export_mb']} MB, COPY's CSV {r['copy_mb']} MB; worker RSS before "
                    f"{r['scenarios']['K']['rss_before_mb']} MB, peak {r['scenarios']['K']['rss_peak_mb']} MB")
    if "summary_heavy_vs_light" in r:
        text.append(f"L: the 200,000-row user's summary sums {r['summary_heavy_rollup_rows']:,} rollup rows "
                    f"({r['summary_heavy_credits']:,} credits in the 30 days)")
    if webhooks is not None:
        text.append(webhook_line(r, webhooks))
    errors = {key: r[key] for key in ("post_errors", "pgbench_failed", "page_errors", "deep_errors",
                                      "balance_errors", "mixed_errors", "service_errors_logged",
                                      "replica_page_errors", "pooled_errors", "pooled_service_errors_logged",
                                      "lots_errors", "filtered_page_errors", "summary_errors", "batch_errors",
                                      "batch_items_missing", "webhook_errors",
                                      "webhook_missing", "webhook_bad_signatures", "webhook_worker_errors_logged")
              if r.get(key)}
    text.append(f"errors: {errors or 'none'}; ledger invariants after the run: "
                f"{'hold' if r['ledger_sound_after'] else 'BROKEN'}")
    measured = []
    if ledger:
        measured += [(key, r["scenarios"][key]) for key in "ABCD"]
        measured += [("E max", r["scenarios"]["E"]), ("E half", r["scenarios"]["E"]["open_loop_conditions"])]
        if "G" in r["scenarios"]:
            measured.append(("G", r["scenarios"]["G"]))
        measured.append(("H", r["scenarios"]["H"]))
    measured += [(key, r["scenarios"][key]) for key in "JKLM" if key in r["scenarios"]]
    if webhooks is not None:
        measured += [("I", webhooks), ("I open loop", webhooks["open_loop_conditions"])]
    text.append("while measuring (neighbours' CPU in cores, checkpoints, autovacuum runs): " + "; ".join(
        f"{name} {c['neighbour_cores']}, {c['checkpoints']}, {c['autovacuum_runs']}" for name, c in measured))
    text.append(f"{r['workers']} gunicorn workers, {PROFILES[r['profile']].connections} connections; "
                f"seed {r['seed_rows']:,} rows in {r['seed_load_s']} s; load average {r['loadavg_start']} -> "
                f"{r['loadavg_end']} on {r['machine']['cores']} cores; {r['total_s']} s in all")
    return "\n".join(text)


def webhook_line(r: dict[str, Any], webhooks: dict[str, Any]) -> str:
    delivered = ", ".join(f"{part['delivered_rps']:,.0f}" for part in webhooks["beside_slices"] if part["enabled"])
    drained = f"in {webhooks['drain_s']} s" if webhooks["drain_s"] is not None else f"NOT in {WEBHOOK_DRAIN_SECONDS} s"
    return (
        f"I at {r['webhook_rate']:,.0f} spends/s (achieved {r['webhook_achieved_rps']:,.0f}/s, "
        f"{webhooks['open_loop']['skipped_over_max_in_flight']} skipped): {r['webhook_delivered']:,} of "
        f"{r['webhook_delivered'] + r['webhook_missing']:,} acknowledged spends' events received within "
        f"{WEBHOOK_GRACE_SECONDS} s, latency max {webhooks['latency_max_ms']} ms; {r['webhook_duplicates']} duplicates, "
        f"{r['webhook_bad_signatures']} bad signatures; with the endpoint enabled and spends at full speed the "
        f"worker delivered {delivered} per s ({r['webhook_spend_delivered_share']:.0%} of those spends' events); "
        f"its queue emptied {drained} after ({webhooks['drain_rps']} per s)"
    )


def only_scenarios(letters: str) -> str:
    """The scenarios of --only, in the order a run without --only runs them."""
    letters = letters.upper()
    if not letters or set(letters) - set(ONLY_SCENARIOS):
        raise argparse.ArgumentTypeError(
            f"letters of {ONLY_SCENARIOS} (A to H run only all together, in a run without --only)")
    return "".join(letter for letter in ONLY_SCENARIOS if letter in letters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks (see BENCHMARKS.md).")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--no-replica", dest="replica", action="store_false",
                        help="skip scenario B served from a streaming replica")
    parser.add_argument("--only", type=only_scenarios, metavar="LETTERS",
                        help=f"the setup, then only these of {', '.join(ONLY_SCENARIOS)} (e.g. I, or JKL)")
    args = parser.parse_args(argv)
    require_wrk()
    if pgbouncer_binary() is None:
        raise SystemExit("pgbouncer is not installed: `apt-get install -y pgbouncer` (the make targets do it as root)")
    results = run(PROFILES[args.profile], replica=args.replica, only=args.only)
    publish(results, f"{args.only}-{args.profile}" if args.only else args.profile, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
