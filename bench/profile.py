"""Where a request's time goes on the two hot paths: ``make bench-profile``.

Sets up like ``make bench-quick`` (same seed, same gunicorn.conf.py), with
``pg_stat_statements`` loaded in the embedded PostgreSQL, then for each path
(POST spend, GET first page, and the bare Flask endpoint for scale) runs wrk
while py-spy samples one gunicorn worker. It prints, as Markdown:

- CPU per request of the gunicorn workers, PostgreSQL and wrk (from /proc);
- the workers' CPU split by what it was doing (py-spy samples, grouped);
- the SQL statements per request with their mean execution time;
- EXPLAIN (ANALYZE, BUFFERS) timings of the page and balance queries, shallow and deep.

py-spy keeps only samples taken while the worker holds the GIL (``--gil``):
psycopg2 and gunicorn release it while they wait on a socket, so a worker
waiting on PostgreSQL or on accept() is not counted, and the split is of the
CPU time that /proc reports, not of wall time.
"""

from __future__ import annotations

import argparse
import collections
import re
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg2

from bench.run import (
    HEAVY_USER,
    LIGHT_USER,
    PAGE_SIZE,
    PG_SETTINGS,
    PROFILES,
    REPO,
    Load,
    bearer,
    gunicorn,
    log,
    postmaster_pid,
    prepare,
    tree_cpu_seconds,
    worker_pids,
)

PY_SPY = str(Path(sys.executable).parent / "py-spy")
TICKS = os.sysconf("SC_CLK_TCK")

# py-spy names each frame "function (path:line)", with paths relative to the sys.path entry they came from:
# "sqlalchemy/engine/base.py", "transactions_service/auth.py", "json/encoder.py" (standard library).
# Matched in this order against every frame of a sample: the first that matches anywhere names the sample,
# so e.g. JSON encoding inside marshmallow counts as marshmallow.
UMBRELLAS = [
    ("JWT verification (flask-jwt-extended, PyJWT)", ("flask_jwt_extended/", "jwt/")),
    ("marshmallow load/dump", ("marshmallow/",)),
    ("SQLAlchemy: cache key + SQL compilation", ("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key.py")),
    ("SQLAlchemy connection pool (checkout, pre-ping, reset)", ("sqlalchemy/pool/",)),
    ("Prometheus metrics", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("JSON encode/decode", ("json/", "flask/json/")),
]
# Otherwise the innermost frame outside the standard library names it.
PACKAGES = [
    ("SQLAlchemy Core: execute, result rows (incl. psycopg2)", ("sqlalchemy/engine/", "psycopg2/")),
    ("SQLAlchemy ORM session (begin, commit, close)", ("sqlalchemy/orm/", "flask_sqlalchemy/")),
    ("SQLAlchemy: building statement objects", ("sqlalchemy/",)),
    ("service code (transactions_service)", ("transactions_service/", "bench/")),
    ("Flask / Werkzeug (routing, request, response)", ("flask/", "werkzeug/")),
    ("gunicorn (accept, HTTP parsing, writing)", ("gunicorn/",)),
]
THIRD_PARTY = tuple(needle for _, needles in UMBRELLAS + PACKAGES for needle in needles if needle not in
                    ("logging/", "json/"))


def frame_file(frame: str) -> str:
    """The path of a frame "function (path:line)"."""
    return frame.rpartition(" (")[2].rpartition(":")[0]


def classify(frames: list[str]) -> str:
    files = [frame_file(frame) for frame in frames]
    for name, prefixes in UMBRELLAS:
        if any(path.startswith(prefixes) for path in files):
            return name
    for path in reversed(files):
        if path.startswith(THIRD_PARTY):
            return next(name for name, prefixes in PACKAGES if path.startswith(prefixes))
    return "other (interpreter, standard library)"


def breakdown(raw: Path) -> tuple[collections.Counter[str], int]:
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        shares[classify(frames)] += int(count)
        total += int(count)
    return shares, total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def statements(dsn: str, requests: int) -> list[str]:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements "
            "WHERE calls >= %s ORDER BY calls DESC, total_exec_time DESC LIMIT 12",
            (max(1, requests // 2),),
        )
        rows = cursor.fetchall()
    connection.close()
    lines = ["| per request | mean exec ms | statement |", "|---:|---:|---|"]
    for calls, mean_ms, query in rows:
        text = query if len(query) <= 110 else query[:107] + "..."
        lines.append(f"| {calls / requests:.2f} | {mean_ms:.3f} | `{text}` |")
    return lines


def reset_statements(dsn: str) -> None:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_statements_reset()")
    connection.close()


def profile_path(label: str, load: Load, url: str, script: str, headers: dict[str, str] | None, seconds: int,
                 workers: list[int], postmaster: int | None, dsn: str, out: Path) -> list[str]:
    log(f"profiling {label} for {seconds} s")
    if postmaster:
        reset_statements(dsn)
    db_before = tree_cpu_seconds(postmaster) if postmaster else 0.0
    before = {pid: cpu_seconds(pid) for pid in workers}
    raw = out / (re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".txt")
    spy = subprocess.Popen([PY_SPY, "record", "--pid", str(workers[0]), "--duration", str(seconds + 2),
                            "--rate", "250", "--gil", "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        wrk_started = os.times()
        measured = load.wrk(url, script, seconds, headers=headers)
        wrk_cpu = (os.times().children_user - wrk_started.children_user
                   + os.times().children_system - wrk_started.children_system)
    finally:
        spy.wait(timeout=seconds + 60)
    after = {pid: cpu_seconds(pid) for pid in workers}
    db_after = tree_cpu_seconds(postmaster) if postmaster else 0.0
    requests = measured.requests
    worker_ms = sum(after[pid] - before[pid] for pid in workers) / requests * 1000
    db_ms = (db_after - db_before) / requests * 1000
    lines = [f"### {label}", "",
             f"{measured.rps:,.0f} req/s at {load.profile.connections} connections over {measured.seconds:.0f} s; "
             f"CPU per request: gunicorn workers {worker_ms:.2f} ms, PostgreSQL {db_ms:.2f} ms, "
             f"wrk {wrk_cpu / requests * 1000:.2f} ms.", ""]
    shares, total = breakdown(raw)
    if total:
        lines += ["| worker CPU went to | share | ms per request |", "|---|---:|---:|"]
        for name, count in shares.most_common():
            lines.append(f"| {name} | {count / total:.0%} | {count / total * worker_ms:.2f} |")
        lines += ["", f"({total:,} py-spy samples of one worker; raw stacks: {raw.name})", ""]
    else:
        lines += ["(py-spy recorded nothing: " + spy.stderr.read().decode(errors="replace")[-300:] + ")", ""]
    if postmaster:
        lines += statements(dsn, requests) + [""]
    return lines


def profile_pgbench(load: Load, dsn: str, scripts: list[Path], seconds: int, postmaster: int) -> list[str]:
    """The reference of scenario A, costed the same way: CPU per transaction of PostgreSQL and of pgbench."""
    log(f"profiling pgbench spend for {seconds} s")
    reset_statements(dsn)
    processes = len(worker_pids(postmaster))
    db_before = tree_cpu_seconds(postmaster)
    started = os.times()
    measured = load.pgbench(dsn, scripts, seconds, "simple")
    client = (os.times().children_user - started.children_user
              + os.times().children_system - started.children_system)
    deadline = time.monotonic() + 5
    while len(worker_pids(postmaster)) > processes and time.monotonic() < deadline:
        time.sleep(0.05)  # pgbench's backends count once the postmaster has reaped them
    db_ms = (tree_cpu_seconds(postmaster) - db_before) / measured.requests * 1000
    return [
        "### pgbench spend (the reference of A)", "",
        f"{measured.rps:,.0f} tps at {load.profile.connections} clients, -M simple; CPU per transaction: "
        f"PostgreSQL {db_ms:.2f} ms, pgbench {client / measured.requests * 1000:.2f} ms.", "",
        *statements(dsn, measured.requests), "",
    ]


def explain(dsn: str, deep_cursor_row: tuple) -> list[str]:
    """Server-side time of the history and balance queries, as the service writes them."""
    page = ("SELECT * FROM user_transactions WHERE user_id = %(user)s {extra} "
            "ORDER BY created_at DESC, id DESC LIMIT 21")
    balance = ("SELECT b.balance, b.held - (SELECT coalesce(sum(-t.credits), 0) FROM user_transactions t "
               "WHERE t.user_id = %(user)s AND t.status = 'pending' AND t.type = 'usage' "
               "AND t.hold_expires_at <= now()) FROM user_balances b WHERE b.user_id = %(user)s")
    cases = [
        ("first page, 200k-row user", page.format(extra=""), {"user": str(HEAVY_USER)}),
        ("page 5,000 by cursor", page.format(extra="AND (created_at, id) < (%(created)s, %(id)s)"),
         {"user": str(HEAVY_USER), "created": deep_cursor_row[0], "id": deep_cursor_row[1]}),
        ("balance, 200k-row user", balance, {"user": str(HEAVY_USER)}),
        ("balance, 10-row user", balance, {"user": str(LIGHT_USER)}),
    ]
    lines = ["| query | execution ms (best of 20) | shared buffers hit / read | plan |", "|---|---:|---|---|"]
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        for label, sql, params in cases:
            best, plan_text = float("inf"), []
            for _ in range(20):
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + sql, params)
                plan_text = [row[0] for row in cursor.fetchall()]
                timing = next(line for line in plan_text if line.startswith("Execution Time"))
                best = min(best, float(timing.split(":")[1].split()[0]))
            buffers = next((line.strip() for line in plan_text if "Buffers:" in line), "")
            nodes = " → ".join(line.strip().split("  (")[0].lstrip("-> ") for line in plan_text
                               if "(cost=" in line)
            lines.append(f"| {label} | {best:.3f} | {buffers.replace('Buffers: ', '')} | {nodes} |")
    connection.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile the POST spend and GET first page paths.")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or not Path(PY_SPY).exists():
        raise SystemExit("needs wrk and py-spy: `make bench-profile` installs both")
    profile = PROFILES["quick"]
    out = REPO / "bench" / "results" / "profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report = ["## Profile", "", f"load average at start: {Path('/proc/loadavg').read_text().split()[0]}", ""]
    with ExitStack() as stack:
        setup = prepare(stack, profile, PG_SETTINGS + ("shared_preload_libraries=pg_stat_statements",))
        with psycopg2.connect(setup.dsn) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute(
                "SELECT created_at, id FROM user_transactions WHERE user_id = %s "
                "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
                (str(HEAVY_USER), 4_999 * PAGE_SIZE - 1),
            )
            deep_row = cursor.fetchone()
        connection.close()
        load = Load(setup.env, profile)
        service = setup.service
        load.wrk(service.url, "mixed.lua", 5, counts=False)
        workers = service.workers()
        postmaster = postmaster_pid(setup.dsn) if not os.environ.get("BENCH_DATABASE_URL") else None
        heavy = bearer(setup.tokens["heavy"])
        report += profile_path("POST spend", load, service.url + "/api/transactions", "spend.lua", None,
                               args.seconds, workers, postmaster, setup.dsn, out)
        if postmaster:
            report += profile_pgbench(load, setup.dsn, setup.spend_scripts, args.seconds, postmaster)
        report += profile_path("GET first page", load, f"{service.url}/api/transactions?limit={PAGE_SIZE}",
                               "get.lua", heavy, args.seconds, workers, postmaster, setup.dsn, out)
        report += profile_path("GET page 5,000 by cursor", load,
                               f"{service.url}/api/transactions?limit={PAGE_SIZE}&cursor={setup.deep_cursor}",
                               "get.lua", heavy, args.seconds, workers, postmaster, setup.dsn, out)
        with gunicorn("bench.bare_app:app", setup.env, setup.workdir / "bare.log", "/api/transactions") as bare:
            report += profile_path("bare Flask, same body", load, f"{bare.url}/api/transactions?limit={PAGE_SIZE}",
                                   "get.lua", heavy, args.seconds, bare.workers(), None, setup.dsn, out)
        report += ["### Queries on the server (EXPLAIN ANALYZE)", ""] + explain(setup.dsn, deep_row) + [""]
    report.append(f"load average at end: {Path('/proc/loadavg').read_text().split()[0]}")
    text = "\n".join(report)
    (out / "profile.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
