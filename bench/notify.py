"""What waking the webhook worker costs a write: NOTIFY on every commit, and the trigger that notifies only on demand.

``python -m bench.notify`` starts a throwaway
PostgreSQL and runs pgbench, eight clients, one-row inserts into a table
shaped like the feed's, in alternating slices:

- ``plain``: no trigger;
- ``idle_trigger``: migration 0009's trigger, with no worker waiting (the
  state under load, when the worker is busy): one lookup per statement;
- ``waiting_trigger``: the same trigger with a worker waiting, so every
  commit notifies: the cost of ``LISTEN``/``NOTIFY`` done the plain way.

It prints the transactions per second of each and their ratios to ``plain``,
and writes them to ``bench/results/<UTC time>-notify.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

from .run import database, log, publish

def _wake_function() -> str:
    """The trigger's function as migration 0009 makes it, so that this measures the one in use."""
    path = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0009_wake_and_lease.py"
    spec = importlib.util.spec_from_file_location("wake_and_lease", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WAKE_FUNCTION


SCHEMA = """
CREATE TABLE plain_events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data json);
CREATE TABLE woken_events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data json);
CREATE TABLE event_relays (name text PRIMARY KEY, wake_until timestamptz);
INSERT INTO event_relays VALUES ('webhooks', NULL), ('jetstream', NULL);
{wake_function};
CREATE TRIGGER ledger_events_wake AFTER INSERT ON woken_events FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_wake();
"""
INSERT = "INSERT INTO {table} (data) VALUES ('{{\"type\":\"transaction.created\",\"credits\":-1}}');\n"


def pgbench(dsn: str, script: Path, seconds: int) -> float:
    out = subprocess.run(["pgbench", "-n", "-c", "8", "-j", "2", "-T", str(seconds), "-f", str(script), dsn],
                         capture_output=True, text=True, check=True).stdout
    return float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as workdir, database(Path(workdir)) as url:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = psycopg2.connect(dsn)
        admin.autocommit = True
        admin.cursor().execute(SCHEMA.format(wake_function=_wake_function()))
        listener = psycopg2.connect(dsn)  # a worker's connection, listening throughout (its queue drained below)
        listener.autocommit = True
        listener.cursor().execute("LISTEN ledger_events")
        scripts = {name: Path(workdir) / f"{name}.sql" for name in ("plain", "woken")}
        scripts["plain"].write_text(INSERT.format(table="plain_events"))
        scripts["woken"].write_text(INSERT.format(table="woken_events"))
        measured: dict[str, list[float]] = {"plain": [], "idle_trigger": [], "waiting_trigger": []}
        for round_ in range(args.rounds):
            log(f"round {round_ + 1} of {args.rounds}")
            measured["plain"].append(pgbench(dsn, scripts["plain"], args.seconds))
            admin.cursor().execute("UPDATE event_relays SET wake_until = NULL")
            measured["idle_trigger"].append(pgbench(dsn, scripts["woken"], args.seconds))
            admin.cursor().execute("UPDATE event_relays SET wake_until = now() + interval '1 hour' WHERE name = 'webhooks'")
            measured["waiting_trigger"].append(pgbench(dsn, scripts["woken"], args.seconds))
            listener.poll()
            listener.notifies.clear()
        listener.close()
        admin.close()
    tps = {name: round(statistics.mean(values), 1) for name, values in measured.items()}
    results = {"tps": tps, "runs": measured,
               "idle_trigger_ratio": round(tps["idle_trigger"] / tps["plain"], 3),
               "waiting_trigger_ratio": round(tps["waiting_trigger"] / tps["plain"], 3)}
    summary = "\n".join(f"{name:16} {value:10,.1f} tx/s  {value / tps['plain']:.3f} of plain" for name, value in tps.items())
    publish(results, "notify", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
