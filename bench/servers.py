"""The WSGI server itself: gunicorn's sync workers against Granian, ``make bench-servers``.

One run on the quick dataset (``bench.run.prepare``), with four servers up at
once and measured in alternating slices (``bench.run.paired``):

- the service under gunicorn, exactly as ``make bench`` serves it
  (gunicorn.conf.py: 5 sync workers, ``preload_app``), and the same service
  under Granian (``granian --interface wsgi``, the same number of worker
  processes, one blocking thread each, ``--respawn-failed-workers``), with the
  same environment (``RATELIMIT_ENABLED=false``, ``LOG_LEVEL=WARNING``, its
  own ``PROMETHEUS_MULTIPROC_DIR``);
- scenario B's reference, ``bench/bare_app.py``, under both servers.

It measures scenario A (POST spend, ``bench/lua/spend.lua``) and B (first page
of the 200,000-row user, ``bench/lua/get.lua``) and the bare endpoint under
each server, and ``page_ratio`` (page ÷ bare, same server) under each. wrk keeps
a connection open when the server allows it: gunicorn's sync workers close it
after every response, Granian keeps it. So the page and the bare endpoint are
also measured under Granian with ``Connection: close`` on every request, which
separates what keep-alive is worth from what the server's own code is worth.

Before measuring, it checks that the service answers correctly under Granian
(a purchase, a spend and its idempotent replay, a page identical to
gunicorn's, a balance, ``scripts/smoke.py``, Prometheus counters merged across
the workers). After measuring (unless ``--no-faults``): a worker killed with
SIGKILL under load, under each server; Granian's behaviour without
``--respawn-failed-workers`` and when a respawned worker dies again at once;
and the embedded PostgreSQL stopped and started under load, watched from both
servers. Then the ledger's invariants (``python -m bench.seed --check``).

Prints a table and one JSON object on its last line, also written to
``bench/results/<UTC time>-servers.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests

from bench.run import (
    FLASK,
    PAGE_SIZE,
    PG_SETTINGS,
    PROFILES,
    PYTHON,
    REPO,
    AlsoOwnConditions,
    Conditions,
    Load,
    Measured,
    Paired,
    Prepared,
    Server,
    _answers,
    errors_logged,
    bearer,
    git_commit,
    gunicorn,
    loadavg,
    log,
    machine,
    median_latency,
    paired,
    postmaster_pid,
    prepare,
    publish,
    require_wrk,
    throughput,
    versions,
)
from devtools.devdb import EmbeddedPostgres, _free_port

# As gunicorn.conf.py: WEB_CONCURRENCY, or 2 x cores + 1.
WORKERS = int(os.environ.get("WEB_CONCURRENCY") or (os.cpu_count() or 1) * 2 + 1)
ROUNDS, SECONDS = 4, 4


@contextmanager
def granian(app_spec: str, env: dict[str, str], log_path: Path, ready_path: str,
            headers: dict[str, str] | None = None, respawn: bool = True, stop_timeout: float = 60) -> Iterator[Server]:
    """``app_spec`` under Granian's WSGI interface, WORKERS processes with one blocking thread each.

    Granian binds the port itself (no socket can be handed over), so the port is
    picked free just before. Each worker imports the app after the fork (there is
    no preload), so no engine or connection is shared across processes. Workers
    do not exit when their master dies, so any left when it has stopped are killed.
    """
    port = _free_port()
    command = [PYTHON, "-m", "granian", "--interface", "wsgi", "--workers", str(WORKERS),
               "--blocking-threads", "1", "--host", "127.0.0.1", "--port", str(port), "--no-ws",
               *(["--respawn-failed-workers"] if respawn else []), app_spec]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while not _answers(server.url + ready_path, headers) or len(server.workers()) < WORKERS:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"granian ({app_spec}) did not start; see {log_path}:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield server
    finally:
        workers = server.workers()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                log(f"granian ({app_spec}) did not stop within {stop_timeout:g} s of SIGTERM; killed")
                process.kill()
                process.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fresh_dir(parent: Path, prefix: str) -> str:
    path = parent / f"{prefix}-{secrets.token_hex(3)}"
    path.mkdir()
    return str(path)


# --- correctness under Granian ---------------------------------------------------------------------------------


def keeps_alive(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Two requests on one HTTP/1.1 connection: does the server keep it open after the first response?"""
    import http.client

    address = url.removeprefix("http://")
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.request("GET", f"/api/transactions?limit={PAGE_SIZE}", headers=headers)
        first = connection.getresponse()
        first.read()
        kept = not first.will_close
        connection_header = first.getheader("Connection")
        names = [name for name, _ in first.getheaders()]
        second_status = None
        if kept:
            connection.request("GET", f"/api/transactions?limit={PAGE_SIZE}", headers=headers)
            second = connection.getresponse()
            second.read()
            second_status = second.status
        return {"keeps_alive": kept, "connection_header": connection_header, "second_status": second_status,
                "header_names_lowercase": all(name == name.lower() for name in names)}
    finally:
        connection.close()


def metrics_total(url: str, metrics_token: str) -> float:
    response = requests.get(url + "/metrics", headers=bearer(metrics_token), timeout=10)
    response.raise_for_status()
    return sum(float(line.rsplit(" ", 1)[1]) for line in response.text.splitlines()
               if line.startswith("http_requests_total{"))


def correctness(setup: Prepared, service: Server, reference: Server, metrics_token: str,
                metrics_dir: str) -> dict[str, Any]:
    """The service's answers under Granian: statuses, an idempotent replay, a page identical to gunicorn's."""
    api, tokens, spender = service.url + "/api", setup.tokens, setup.spenders[1]
    checks: dict[str, Any] = {}
    purchase = {"user_id": spender, "type": "purchase", "amount": "9.99", "credits": 500,
                "description": "Starter pack: 500 credits", "status": "completed"}
    response = requests.post(f"{api}/transactions", json=purchase, headers=bearer(tokens["payment"]), timeout=10)
    checks["purchase_status"] = response.status_code
    spend = {"user_id": spender, "type": "usage", "amount": "0", "credits": -1,
             "description": "Image generation (1024x1024)", "status": "completed"}
    key = {"Idempotency-Key": f"{setup.run_id}-servers-{uuid.uuid4()}"}
    first = requests.post(f"{api}/transactions", json=spend, headers={**bearer(tokens["generation"]), **key}, timeout=10)
    replay = requests.post(f"{api}/transactions", json=spend, headers={**bearer(tokens["generation"]), **key}, timeout=10)
    checks["spend_status"] = first.status_code
    checks["spend_replay_status"] = replay.status_code
    checks["spend_replay_same_body"] = first.content == replay.content
    checks["spend_replay_header"] = replay.headers.get("Idempotent-Replayed")  # looked up case-insensitively
    heavy = bearer(tokens["heavy"])
    page = requests.get(f"{api}/transactions?limit={PAGE_SIZE}", headers=heavy, timeout=10)
    page_gunicorn = requests.get(f"{reference.url}/api/transactions?limit={PAGE_SIZE}", headers=heavy, timeout=10)
    checks["page_status"] = page.status_code
    checks["page_same_as_gunicorn"] = page.content == page_gunicorn.content
    ignore = {"date", "server", "connection", "x-request-id", "transfer-encoding", "content-length"}
    ours = {name.lower(): value for name, value in page.headers.items() if name.lower() not in ignore}
    theirs = {name.lower(): value for name, value in page_gunicorn.headers.items() if name.lower() not in ignore}
    checks["page_header_differences"] = sorted(set(ours.items()) ^ set(theirs.items()))
    checks["page_content_length"] = [page.headers.get("Content-Length"), page_gunicorn.headers.get("Content-Length")]
    balance = requests.get(f"{api}/balance", headers=bearer(tokens["light"]), timeout=10)
    checks["balance_status"] = balance.status_code
    checks["missing_token_status"] = requests.get(f"{api}/balance", timeout=10).status_code
    smoke = subprocess.run([PYTHON, "scripts/smoke.py", "--base-url", service.url], cwd=REPO, env=setup.env,
                           capture_output=True, text=True, timeout=120)
    checks["smoke_exit_status"] = smoke.returncode
    checks["smoke_failure"] = next((line for line in smoke.stdout.splitlines() if line.startswith("FAIL")), None)
    if smoke.returncode != 0:
        log("scripts/smoke.py against Granian failed:\n" + smoke.stdout[-2000:] + smoke.stderr[-2000:])
    # Counters from every worker are merged through the multiprocess directory, as under gunicorn.
    before = metrics_total(service.url, metrics_token)
    for _ in range(50):
        requests.get(service.url + "/healthz", timeout=10)  # a new connection each: any worker may take it
    after = metrics_total(service.url, metrics_token)
    checks["metrics_counted"] = after - before  # 50 and the first /metrics scrape itself
    checks["metrics_worker_files"] = len({re.sub(r"\D", "", name) for name in os.listdir(metrics_dir)})
    checks["keep_alive"] = {"gunicorn": keeps_alive(reference.url, heavy), "granian": keeps_alive(service.url, heavy)}
    # The service's own answers; scripts/smoke.py is reported beside them, since a client that reads
    # header names case-sensitively fails against Granian, which sends them in lower case (HTTP allows either).
    checks["ok"] = (checks["purchase_status"] == 201 and checks["spend_status"] == 201
                    and checks["spend_replay_status"] == 201 and checks["spend_replay_same_body"]
                    and checks["spend_replay_header"] == "true"
                    and checks["page_status"] == 200 and checks["page_same_as_gunicorn"]
                    and checks["balance_status"] == 200 and checks["missing_token_status"] == 401
                    and checks["metrics_counted"] in (50, 51))
    return checks


# --- faults ----------------------------------------------------------------------------------------------------


class Poller(threading.Thread):
    """One request every ``interval`` seconds on a new connection, recording (time, status or error)."""

    def __init__(self, url: str, headers: dict[str, str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.interval = url, headers, interval
        self.samples: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                label = str(requests.get(self.url, headers=self.headers, timeout=(1.0, 3.0)).status_code)
            except requests.RequestException as error:
                label = type(error).__name__
            self.samples.append((started, label))
            self.halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> list[tuple[float, str]]:
        self.halt.set()
        self.join()
        return self.samples

    def summary(self, fault_at: float, back_at: float) -> dict[str, Any]:
        """Counts before the fault and from it on, and how long after ``back_at`` answers were 2xx for good."""
        ok = lambda label: label.startswith("2")  # noqa: E731
        before = Counter(label for t, label in self.samples if t < fault_at)
        after = Counter(label for t, label in self.samples if t >= fault_at)
        failed = [t for t, label in self.samples if t >= fault_at and not ok(label)]
        last_failure = max(failed) if failed else None
        recovered = next((t for t, label in self.samples if t > (last_failure or fault_at) and ok(label)), None)
        return {"before": dict(before), "from_fault": dict(after),
                "first_failure_s": round(min(failed) - fault_at, 2) if failed else None,
                "last_failure_s": round(last_failure - fault_at, 2) if failed else None,
                "ok_again_after_back_s": round(recovered - back_at, 2) if recovered else None}


def in_background(work: Callable[[], Measured]) -> Callable[[], Measured]:
    box: list[Measured] = []
    thread = threading.Thread(target=lambda: box.append(work()), daemon=True)
    thread.start()

    def result() -> Measured:
        thread.join()
        return box[0]

    return result


def wait_for_workers(server: Server, gone: int, timeout: float = 20.0) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.process.poll() is not None:
            return None
        current = server.workers()
        if gone not in current and len(current) >= WORKERS:
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def kill_under_load(name: str, server: Server, load: Load, headers: dict[str, str]) -> dict[str, Any]:
    """SIGKILL one worker while wrk reads pages through 8 connections and a poller reads the balance."""
    page = f"{server.url}/api/transactions?limit={PAGE_SIZE}"
    poller = Poller(server.url + "/api/balance", headers)
    poller.start()
    busy = in_background(lambda: load.wrk(page, "get.lua", 6, counts=False, headers=headers))
    time.sleep(2)
    victim = server.workers()[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced_s = wait_for_workers(server, victim)
    during = busy()
    poller.stop()
    alive = server.process.poll() is None
    after = load.wrk(page, "get.lua", 2, counts=False, headers=headers) if alive else None
    result = {"replaced_s": round(replaced_s, 2) if replaced_s is not None else None, "server_alive": alive,
              "wrk_requests_during": during.requests, "wrk_errors_during": during.errors,
              "poller": poller.summary(killed_at, killed_at + (replaced_s or 0)),
              "wrk_errors_after": after.errors if after else None,
              "wrk_rps_after": round(after.rps, 1) if after else None}
    log(f"{name}: worker {victim} killed; replaced in {result['replaced_s']} s; alive {alive}; "
        f"wrk errors during {during.errors} of {during.requests}, after {result['wrk_errors_after']}")
    return result


def granian_lifecycle(setup: Prepared, headers: dict[str, str]) -> dict[str, Any]:
    """Granian without --respawn-failed-workers (its default), and a respawned worker killed again at once."""
    results: dict[str, Any] = {}
    wait_s = 5
    env = {**setup.env, "PROMETHEUS_MULTIPROC_DIR": fresh_dir(setup.workdir, "metrics-lifecycle")}
    with granian("wsgi:app", env, setup.workdir / "granian-default.log", "/readyz", respawn=False,
                 stop_timeout=10) as server:
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        try:
            server.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        results["default_one_worker_killed"] = {
            "server_alive_after_5_s": server.process.poll() is None,
            "workers_left": len(server.workers()),
            "answers": _answers(server.url + "/readyz", headers),
        }
    with granian("wsgi:app", env, setup.workdir / "granian-respawn.log", "/readyz", stop_timeout=10) as server:
        before = set(server.workers())
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        replaced_s = wait_for_workers(server, victim)
        second = min(set(server.workers()) - before, default=None)
        time.sleep(1)
        if second is not None:
            os.kill(second, signal.SIGKILL)  # the same worker slot dying again within seconds
        try:
            server.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        results["respawn_same_slot_killed_twice"] = {
            "first_replaced_s": round(replaced_s, 2) if replaced_s is not None else None,
            "server_alive_after_5_s": server.process.poll() is None,
            "workers_left": len(server.workers()),
            "answers": _answers(server.url + "/readyz", headers),
        }
    for name in ("granian-default", "granian-respawn"):
        lines = (setup.workdir / f"{name}.log").read_text(errors="replace").splitlines()
        results[f"{name}_log"] = [line for line in lines
                                  if re.search(r"Unexpected exit|crash loop|Respawning|shutdown", line)][-4:]
    log(f"Granian lifecycle: {results}")
    return results


def database_restart(setup: Prepared, load: Load, servers: dict[str, Server], headers: dict[str, str]) -> dict[str, Any]:
    """Stop the embedded PostgreSQL (fast shutdown) under load for 3 s and start it again; watch both servers."""
    pollers = {name: Poller(f"{server.url}/api/transactions?limit={PAGE_SIZE}", headers)
               for name, server in servers.items()}
    for poller in pollers.values():
        poller.start()
    busy = in_background(lambda: load.wrk(servers["granian"].url + "/api/transactions", "spend.lua", 9, counts=False))
    postgres = EmbeddedPostgres(setup.workdir / "postgres", settings=PG_SETTINGS)  # the run's own: same directory and port
    time.sleep(1.5)
    stopped_at = time.monotonic()
    postgres.stop("fast")
    time.sleep(3)
    start_requested_at = time.monotonic()
    postgres.start()
    started_at = time.monotonic()
    during = busy()
    time.sleep(0.5)
    for poller in pollers.values():
        poller.stop()
    summaries = {name: poller.summary(stopped_at, start_requested_at) for name, poller in pollers.items()}
    after = {name: {"spend_errors": load.wrk(server.url + "/api/transactions", "spend.lua", 2, counts=False).errors,
                    "page_errors": load.wrk(f"{server.url}/api/transactions?limit={PAGE_SIZE}", "get.lua", 2,
                                            counts=False, headers=headers).errors}
             for name, server in servers.items()}
    result = {"down_s": round(start_requested_at - stopped_at, 2), "start_s": round(started_at - start_requested_at, 2),
              "pollers": summaries,
              "granian_spend_wrk_during": {"requests": during.requests, "errors": during.errors}, "after": after,
              "servers_alive": {name: server.process.poll() is None for name, server in servers.items()}}
    log(f"database restart: {result}")
    return result


# --- the run ---------------------------------------------------------------------------------------------------


def run(rounds: int, seconds: int, faults: bool) -> dict[str, Any]:
    started = time.monotonic()
    profile = PROFILES["quick"]
    results: dict[str, Any] = {"profile": "servers", "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "commit": git_commit(), "loadavg_start": loadavg(), "machine": machine(),
                               "rounds": rounds, "seconds": seconds, "workers": WORKERS}
    with ExitStack() as stack:
        setup = prepare(stack, profile)
        workdir, env = setup.workdir, setup.env
        results["versions"] = {**versions(setup.dsn), "granian": version("granian")}
        results.update(setup.seed)
        metrics_token = secrets.token_urlsafe(24)
        metrics_dir = fresh_dir(workdir, "metrics-granian")
        granian_env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "METRICS_TOKEN": metrics_token}
        log(f"starting the service under Granian ({WORKERS} workers, 1 blocking thread each)")
        service = {"gunicorn": setup.service,
                   "granian": stack.enter_context(granian("wsgi:app", granian_env, workdir / "granian.log", "/readyz"))}
        if len(service["gunicorn"].workers()) != WORKERS or len(service["granian"].workers()) != WORKERS:
            raise RuntimeError("the two servers do not run the same number of workers")
        log("checking the service's answers under Granian")
        results["checks"] = correctness(setup, service["granian"], service["gunicorn"], metrics_token, metrics_dir)
        if not results["checks"]["ok"]:
            log(f"the service does not answer correctly under Granian: {results['checks']}")

        bare_env = {**env, "PROMETHEUS_MULTIPROC_DIR": fresh_dir(workdir, "metrics-bare")}
        bare = {"gunicorn": stack.enter_context(gunicorn("bench.bare_app:app", bare_env, workdir / "bare.log",
                                                         "/api/transactions")),
                "granian": stack.enter_context(granian("bench.bare_app:app", bare_env, workdir / "bare-granian.log",
                                                       "/api/transactions"))}
        load = Load(env, profile)
        heavy = bearer(setup.tokens["heavy"])
        close = {**heavy, "Connection": "close"}
        log("warming up every server")
        for name in ("gunicorn", "granian"):
            load.wrk(service[name].url, "mixed.lua", 3, counts=False)
            load.wrk(bare[name].url + "/api/transactions", "get.lua", 2, counts=False)

        conditions = AlsoOwnConditions(
            Conditions(setup.dsn, service["gunicorn"].process.pid,
                       None if os.environ.get("BENCH_DATABASE_URL") else postmaster_pid(setup.dsn)),
            [service["granian"].process.pid, bare["gunicorn"].process.pid, bare["granian"].process.pid])

        def spend(name: str) -> Callable[[], Measured]:
            return lambda: load.wrk(service[name].url + "/api/transactions", "spend.lua", seconds)

        def page(name: str, headers: dict[str, str] = heavy) -> Callable[[], Measured]:
            return lambda: load.wrk(f"{service[name].url}/api/transactions?limit={PAGE_SIZE}", "get.lua", seconds,
                                    headers=headers)

        def bare_page(name: str, headers: dict[str, str] = heavy) -> Callable[[], Measured]:
            return lambda: load.wrk(f"{bare[name].url}/api/transactions?limit={PAGE_SIZE}", "get.lua", seconds,
                                    headers=headers, counts=False)

        measured: dict[str, Paired] = {}
        scenarios: dict[str, Any] = {}
        plan = [
            ("A", "A: POST spend, gunicorn vs Granian", spend("gunicorn"), spend("granian")),
            ("B", "B: first page of the 200,000-row user, gunicorn vs Granian", page("gunicorn"), page("granian")),
            ("bare", "bare Flask, gunicorn vs Granian", bare_page("gunicorn"), bare_page("granian")),
            ("close", "Granian with Connection: close on every request, bare Flask vs page",
             bare_page("granian", close), page("granian", close)),
        ]
        for key, title, reference, subject in plan:
            log(title)
            before = conditions.snapshot()
            measured[key] = paired(rounds, reference, subject)
            scenarios[key] = {**conditions.between(before, conditions.snapshot()), **measured[key].slices()}

        a, b, plain, closed = measured["A"], measured["B"], measured["bare"], measured["close"]
        results.update(
            gunicorn_post_rps=round(throughput(a.reference), 1), granian_post_rps=round(throughput(a.subject), 1),
            gunicorn_page_rps=round(throughput(b.reference), 1), granian_page_rps=round(throughput(b.subject), 1),
            gunicorn_bare_rps=round(throughput(plain.reference), 1),
            granian_bare_rps=round(throughput(plain.subject), 1),
            gunicorn_post_p50_ms=round(median_latency(a.reference), 2),
            granian_post_p50_ms=round(median_latency(a.subject), 2),
            gunicorn_page_p50_ms=round(median_latency(b.reference), 2),
            granian_page_p50_ms=round(median_latency(b.subject), 2),
            gunicorn_bare_p50_ms=round(median_latency(plain.reference), 2),
            granian_bare_p50_ms=round(median_latency(plain.subject), 2),
            granian_close_bare_rps=round(throughput(closed.reference), 1),
            granian_close_page_rps=round(throughput(closed.subject), 1),
        )
        r = results
        r.update(
            gunicorn_page_ratio=round(r["gunicorn_page_rps"] / r["gunicorn_bare_rps"], 3),
            granian_page_ratio=round(r["granian_page_rps"] / r["granian_bare_rps"], 3),
            granian_close_page_ratio=round(r["granian_close_page_rps"] / r["granian_close_bare_rps"], 3),
            post_speedup=round(r["granian_post_rps"] / r["gunicorn_post_rps"], 3),
            page_speedup=round(r["granian_page_rps"] / r["gunicorn_page_rps"], 3),
            bare_speedup=round(r["granian_bare_rps"] / r["gunicorn_bare_rps"], 3),
            errors={key: pair.errors for key, pair in measured.items()},
            service_errors_logged={"gunicorn": errors_logged(workdir / "service.log"),
                                   "granian": errors_logged(workdir / "granian.log")},
        )

        if faults:
            log("faults: one worker killed under load, under each server")
            r["faults"] = {name: kill_under_load(name, service[name], load, heavy) for name in ("gunicorn", "granian")}
            log("faults: Granian's own worker supervision")
            r["faults"].update(granian_lifecycle(setup, heavy))
            if os.environ.get("BENCH_DATABASE_URL"):
                log("faults: database restart skipped, BENCH_DATABASE_URL names a server this run does not own")
            else:
                log("faults: PostgreSQL stopped for 3 s and started again under load")
                r["faults"]["database_restart"] = database_restart(setup, load, service, heavy)

        sound = subprocess.run([PYTHON, "-m", "bench.seed", "--check"], cwd=REPO, env=env,
                               capture_output=True, text=True)
        r["ledger_sound_after"] = sound.returncode == 0
        if sound.returncode != 0:
            log("the ledger's invariants do not hold after the run:\n" + sound.stdout)
        r["scenarios"] = scenarios
    r["loadavg_end"] = loadavg()
    r["total_s"] = round(time.monotonic() - started, 1)
    return r


def table(r: dict[str, Any]) -> str:
    rows = [
        ("server", "A spend", "B first page", "bare Flask", "page_ratio", "p50 A / B / bare"),
        ("gunicorn (sync, closes)", f"{r['gunicorn_post_rps']:,.0f} req/s", f"{r['gunicorn_page_rps']:,.0f} req/s",
         f"{r['gunicorn_bare_rps']:,.0f} req/s", f"{r['gunicorn_page_ratio']:g}",
         f"{r['gunicorn_post_p50_ms']} / {r['gunicorn_page_p50_ms']} / {r['gunicorn_bare_p50_ms']} ms"),
        ("granian (keep-alive)", f"{r['granian_post_rps']:,.0f} req/s", f"{r['granian_page_rps']:,.0f} req/s",
         f"{r['granian_bare_rps']:,.0f} req/s", f"{r['granian_page_ratio']:g}",
         f"{r['granian_post_p50_ms']} / {r['granian_page_p50_ms']} / {r['granian_bare_p50_ms']} ms"),
        ("granian, Connection: close", "-", f"{r['granian_close_page_rps']:,.0f} req/s",
         f"{r['granian_close_bare_rps']:,.0f} req/s", f"{r['granian_close_page_ratio']:g}", ""),
        ("granian ÷ gunicorn", f"{r['post_speedup']:g}", f"{r['page_speedup']:g}", f"{r['bare_speedup']:g}", "", ""),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    text.insert(1, "  ".join("-" * width for width in widths))
    text.append("")
    checks = r["checks"]
    alive = checks["keep_alive"]
    text.append(f"under Granian: answers {'correct' if checks['ok'] else 'NOT CORRECT'} (purchase "
                f"{checks['purchase_status']}, spend {checks['spend_status']}, replay {checks['spend_replay_status']}"
                f"{' same body' if checks['spend_replay_same_body'] else ' DIFFERENT body'}, page "
                f"{checks['page_status']}{' same bytes as gunicorn' if checks['page_same_as_gunicorn'] else ' DIFFERS'}"
                f", metrics counted {checks['metrics_counted']:g} of 50 requests across "
                f"{checks['metrics_worker_files']} worker files); keep-alive: gunicorn "
                f"{alive['gunicorn']['keeps_alive']}, granian {alive['granian']['keeps_alive']}; header names in "
                f"lower case: gunicorn {alive['gunicorn']['header_names_lowercase']}, granian "
                f"{alive['granian']['header_names_lowercase']}")
    text.append(f"scripts/smoke.py against Granian: exit {checks['smoke_exit_status']}"
                + (f" ({checks['smoke_failure']})" if checks["smoke_failure"] else ""))
    text.append(f"errors (wrk): {r['errors']}; ERROR lines logged while measuring: {r['service_errors_logged']}; "
                f"ledger invariants after the run: {'hold' if r['ledger_sound_after'] else 'BROKEN'}")
    text.append("while measuring (neighbours' CPU in cores, checkpoints, autovacuum runs): " + "; ".join(
        f"{name} {c['neighbour_cores']}, {c['checkpoints']}, {c['autovacuum_runs']}" for name, c in r["scenarios"].items()))
    faults = r.get("faults")
    if faults:
        for name in ("gunicorn", "granian"):
            f = faults[name]
            text.append(f"worker killed under load, {name}: replaced in {f['replaced_s']} s, wrk errors "
                        f"{f['wrk_errors_during']} of {f['wrk_requests_during']} during, {f['wrk_errors_after']} after; "
                        f"poller from the kill on: {f['poller']['from_fault']}")
        d, t = faults["default_one_worker_killed"], faults["respawn_same_slot_killed_twice"]
        text.append(f"Granian without --respawn-failed-workers, one worker killed: master alive after 5 s "
                    f"{d['server_alive_after_5_s']}, {d['workers_left']} workers left, answers {d['answers']}; "
                    f"with it, the replacement killed again within seconds: master alive "
                    f"{t['server_alive_after_5_s']}, answers {t['answers']}")
        if "database_restart" in faults:
            db = faults["database_restart"]
            for name, p in db["pollers"].items():
                text.append(f"PostgreSQL down {db['down_s']} s (start took {db['start_s']} s), {name}: "
                            f"{p['from_fault']} from the stop on; 2xx again {p['ok_again_after_back_s']} s after "
                            f"the start began; after: {db['after'][name]}")
    text.append(f"{r['workers']} workers each, 8 connections, {r['rounds']} rounds of {r['seconds']} s per side; "
                f"load average {r['loadavg_start']} -> {r['loadavg_end']} on {r['machine']['cores']} cores; "
                f"{r['total_s']} s in all")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gunicorn against Granian on scenarios A and B (BENCHMARKS.md).")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="pairs of slices per comparison")
    parser.add_argument("--seconds", type=int, default=SECONDS, help="seconds per slice")
    parser.add_argument("--no-faults", dest="faults", action="store_false", help="skip the fault checks")
    args = parser.parse_args(argv)
    require_wrk()
    try:
        version("granian")
    except Exception:
        raise SystemExit("granian is not installed: `make bench-servers` installs it into .venv") from None
    results = run(args.rounds, args.seconds, args.faults)
    publish(results, "servers", table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
