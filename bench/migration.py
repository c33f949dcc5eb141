"""``make bench-migration``: migration 0005 (balances become lots) on the benchmark's million-row ledger.

Seeds the full dataset at the latest revision, goes back to 0004 (the schema
before lots), then times upgrade → downgrade → upgrade, checking the ledger's
invariants and that every balance became its lot after each upgrade. Prints
one JSON line with the durations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from devtools.devdb import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = str(Path(sys.executable).parent / "flask")
BEFORE_LOTS = "0004_api_keys"
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
            result = {"rows": rows, "users": users, "seed_s": seeded}
            for step, command in (("upgrade_s", "upgrade"), ("downgrade_s", "downgrade"), ("upgrade_again_s", "upgrade")):
                target = [BEFORE_LOTS] if command == "downgrade" else []
                result[step] = run(env, FLASK, "--app", "wsgi", "db", command, *target)
            run(env, PYTHON, "-m", "bench.seed", "--check")
            dsn = url.replace("postgresql+psycopg2://", "postgresql://")
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
