"""Production settings for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value can be overridden from the environment (or on the command line).
"""

import multiprocessing
import os
import shutil
import tempfile

# Prometheus metrics from every worker are merged through files in this
# directory; prometheus_client reads the variable when it is first imported,
# so it is set before the app is loaded.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="transactions-metrics-"))

bind = os.environ.get("BIND", "0.0.0.0:8000")

# Sync workers: each handles one request at a time, so a slow database call
# never stalls other requests inside the same process, and a worker is a
# plain process that the master restarts if it dies. The work is short and
# I/O bound on PostgreSQL: about two workers per core keep the CPU busy.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = os.environ.get("WORKER_CLASS", "sync")

# Load the app once in the master: a bad configuration stops the server at
# start-up with one clear message instead of workers failing in a loop, and
# a worker that dies is replaced by a fork in milliseconds.
preload_app = True

# A worker silent for this long is killed and replaced. Requests are bounded
# well below it by DATABASE_STATEMENT_TIMEOUT_MS (10 s).
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
# On SIGTERM workers stop accepting and finish in-flight requests within this.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
keepalive = 5

# Request line and header bounds, enforced before the app sees the request. They sit
# above the app's own (transactions_service/http.py: a 2 KiB path or query, 50 headers,
# 8 KiB per header), so that every bound a client can reach is answered by the app as a
# problem with a request id; what gunicorn still refuses by itself (beyond these, or not
# well-formed HTTP) is answered as problem+json too (transactions_service/gunicorn_errors.py).
limit_request_line = 8190  # gunicorn's maximum
limit_request_fields = 100
limit_request_field_size = 16380

from transactions_service.gunicorn_errors import install as _answer_refusals_as_problems  # noqa: E402

_answer_refusals_as_problems()

# The service writes its own access line per request (JSON, with request id
# and caller); gunicorn's would duplicate it.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def on_starting(server):
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # Files of a previous run would add its counts to this one's.
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def when_ready(server):
    port = os.environ.get("METRICS_PORT")
    if port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(int(port), addr=os.environ.get("METRICS_ADDR", "127.0.0.1"), registry=registry)
        server.log.info("metrics on %s:%s", os.environ.get("METRICS_ADDR", "127.0.0.1"), port)


def post_fork(server, worker):
    # Connections opened before the fork (none, normally) must not be shared.
    from transactions_service.extensions import db

    app = getattr(server.app, "wsgi", lambda: None)()
    if app is not None:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose(close=False)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
