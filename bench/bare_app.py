"""Scenario B's reference: a bare Flask endpoint serving a first page of history from memory.

The ceiling for the web layer: same gunicorn and gunicorn.conf.py as the
service, same path, same 20-item JSON body (fetched from the service once by
bench/run.py and named by BENCH_BARE_BODY), and nothing else: no token, no
query, no serialisation.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, Response

from transactions_service.extensions import db


def create_bare_app() -> Flask:
    app = Flask(__name__)
    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    # gunicorn.conf.py's post_fork hook disposes the ledger's engine in each worker, so one must exist;
    # it is never used, and SQLAlchemy does not connect before it is.
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    db.init_app(app)

    @app.get("/api/transactions")
    def first_page() -> Response:
        return Response(body, mimetype="application/json")

    return app


app = create_bare_app()
