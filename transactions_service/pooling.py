"""Running behind a transaction-mode pooler (PgBouncer): the timeouts come from the server.

With ``DATABASE_CONNECT_OPTIONS=false`` the service sends no ``options``
startup parameter (PgBouncer refuses it), so ``statement_timeout`` and
``lock_timeout`` are whatever the role and database say. Nothing would notice
if an operator forgot to set them: a duplicate ``Idempotency-Key`` would wait
without bound instead of answering 409. So the first connection of each
process compares the server's values with the configured ones and says so.
"""

from __future__ import annotations

import logging

from flask import Flask
from sqlalchemy import event

from .extensions import db

log = logging.getLogger(__name__)

_TIMEOUTS = {"statement_timeout": "DATABASE_STATEMENT_TIMEOUT_MS", "lock_timeout": "DATABASE_LOCK_TIMEOUT_MS"}


def init_pooling(app: Flask) -> None:
    if app.config.get("DATABASE_CONNECT_OPTIONS", True):
        return
    expected = {name: int(app.config[setting]) for name, setting in _TIMEOUTS.items()}
    with app.app_context():
        engines = list(db.engines.values())
    checked = False

    def compare_server_timeouts(dbapi_connection, _record) -> None:
        nonlocal checked
        if checked:  # the role's settings are the same on every connection: once per process is enough
            return
        checked = True
        with dbapi_connection.cursor() as cursor:
            # pg_settings gives both in milliseconds, whatever unit they were set in.
            cursor.execute("SELECT name, setting::int FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout')")
            actual = dict(cursor.fetchall())
        dbapi_connection.rollback()
        for name, value in expected.items():
            if actual.get(name) != value:
                log.warning(
                    "%s is %s ms on the server but %s is %s: with DATABASE_CONNECT_OPTIONS=false the server's "
                    "setting applies; set it on the service's role (ALTER ROLE ... IN DATABASE ... SET %s = '%sms')",
                    name, actual.get(name), _TIMEOUTS[name], value, name, value,
                )

    # Every pool: a worker that only serves the hot paths may never open the default one.
    for engine in engines:
        event.listen(engine, "connect", compare_server_timeouts)
