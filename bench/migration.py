"""``make bench-migration``: migrations 0005 (lots) and 0006 (refunds, reversals) on the million-row ledger.

Seeds the full dataset at the latest revision, goes back to 0004 (the schema
before lots), then times 0005 up, 0006 up, down to 0004 and up again,
checking the ledger's invariants and that every balance became its lot after
each upgrade. While 0006 runs, a writer updates one transaction over and over
and reports the longest any of its writes waited: 0006 is meant to run while
the previous release serves writes. Prints one JSON line with the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from devtools.devdb import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = str(Path(sys.executable).parent / "flask")
BEFORE_LOTS = "0004_api_keys"
LOTS = "0005_credit_lots"
PROBE_WRITE = "UPDATE user_transactions SET updated_at = updated_at WHERE id = (SELECT id FROM user_transactions ORDER BY id LIMIT 1)"
LOTS_MATCH_BALANCES = (
    "SELECT count(*) FROM user_balances AS b"
    " LEFT JOIN (SELECT user_id, sum(remaining + held) AS credits, sum(held) AS held FROM credit_lots GROUP BY user_id) AS l"
    " USING (user_id)"
    " LEFT JOIN (SELECT user_id, sum(credits) AS credits, sum(held) AS held FROM lot_postings GROUP BY user_id) AS p"
    " USING (user_id)"
    " WHERE coalesce(l.credits, 0) <> b.balance OR coalesce(l.held, 0) <> b.held"
    " OR coalesce(p.credits, 0) <> b.balance OR coalesce(p.held, 0) <> b.held"
)


def run(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    subprocess.run(args, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - started, 2)


class WriteProbe(threading.Thread):
    """Writes one row of user_transactions over and over, keeping the longest a write took."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        self.stopping = threading.Event()
        self.writes, self.longest = 0, 0.0

    def run(self) -> None:
        with self.connection.cursor() as cursor:
            while not self.stopping.is_set():
                started = time.monotonic()
                cursor.execute(PROBE_WRITE)
                self.longest = max(self.longest, time.monotonic() - started)
                self.writes += 1
                time.sleep(0.001)

    def finish(self) -> dict[str, float]:
        self.stopping.set()
        self.join()
        self.connection.close()
        return {"writes_during_0006": self.writes, "longest_write_during_0006_ms": round(self.longest * 1000, 1)}


def timed_steps(env: dict[str, str], dsn: str) -> dict[str, float]:
    """0005 up, 0006 up with a writer going, down to before lots, and up again."""
    result = {"upgrade_0005_s": run(env, FLASK, "--app", "wsgi", "db", "upgrade", LOTS)}
    probe = WriteProbe(dsn)
    probe.start()
    result["upgrade_0006_s"] = run(env, FLASK, "--app", "wsgi", "db", "upgrade")
    result.update(probe.finish())
    result["downgrade_s"] = run(env, FLASK, "--app", "wsgi", "db", "downgrade", BEFORE_LOTS)
    result["upgrade_again_s"] = run(env, FLASK, "--app", "wsgi", "db", "upgrade")
    return result


def main() -> int:
    users = int(os.environ.get("MIGRATION_USERS", "10000"))
    rows = int(os.environ.get("MIGRATION_ROWS", "1000000"))
    with tempfile.TemporaryDirectory(prefix="transactions-migration-") as workdir:
        postgres = EmbeddedPostgres(Path(workdir) / "postgres").start()
        try:
            url = postgres.ensure_database("ledger")
            env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET_KEY": "m" * 48, "JWT_DECODE_AUDIENCE": "bench",
                   "LOG_LEVEL": "WARNING"}
            run(env, FLASK, "--app", "wsgi", "db", "upgrade")
            seeded = run(env, PYTHON, "-m", "bench.seed", "--users", str(users), "--transactions", str(rows))
            run(env, FLASK, "--app", "wsgi", "db", "downgrade", BEFORE_LOTS)
            dsn = url.replace("postgresql+psycopg2://", "postgresql://")
            result = {"rows": rows, "users": users, "seed_s": seeded, **timed_steps(env, dsn)}
            run(env, PYTHON, "-m", "bench.seed", "--check")
            with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
                cursor.execute(LOTS_MATCH_BALANCES)
                result["balances_not_matching_their_lots"] = cursor.fetchone()[0]
                cursor.execute("SELECT count(*) FROM credit_lots")
                result["lots"] = cursor.fetchone()[0]
        finally:
            postgres.destroy()
    print(json.dumps(result))
    return 0 if result["balances_not_matching_their_lots"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
