"""Where history reads go: the streaming replica named by ``DATABASE_READ_URL``, or the primary.

Only the history list reads from the replica. Every write, every balance (a
spending decision, or the billing page's balance right after a purchase) and
every read of one transaction (callers read back what they have just
written) stays on the primary.

A replica that refuses a connection or fails a read is skipped for
``DATABASE_READ_RETRY_SECONDS`` and the read is repeated on the primary (a
read is safe to repeat), so a dead replica costs each worker one failed
attempt per window, bounded by a short connect timeout, and never an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from .config import READ_REPLICA_BIND, STATEMENTS_BIND
from .extensions import db

log = logging.getLogger(__name__)

Read = TypeVar("Read")


def _is_replica_failure(error: Exception) -> bool:
    """A refused or lost connection, or a query cancelled by replay: the primary can answer instead."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


class ReadReplica:
    """The replica's engine and whether this worker should try it now."""

    def __init__(self, engine: Engine, retry_seconds: float) -> None:
        self.engine = engine
        self.retry_seconds = retry_seconds
        self._skipped_until = 0.0

    @property
    def in_use(self) -> bool:
        return time.monotonic() >= self._skipped_until

    def failed(self, error: BaseException) -> None:
        self._skipped_until = time.monotonic() + self.retry_seconds
        cause = getattr(error, "orig", None) or error
        log.warning(
            "read replica unavailable (%s); history is read from the primary for %s s",
            type(cause).__name__,
            self.retry_seconds,
        )

    def status(self) -> str:
        """``ok`` or ``unavailable``, for readiness (which never fails because of the replica)."""
        if not self.in_use:
            return "unavailable"
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            if not _is_replica_failure(error):
                raise
            self.failed(error)
            return "unavailable"
        return "ok"


def init_read_replica(app: Flask) -> None:
    """Keep the replica's state when ``DATABASE_READ_URL`` made its engine (config.py, a bind no table uses)."""
    if READ_REPLICA_BIND not in app.config.get("SQLALCHEMY_BINDS", {}):
        return
    with app.app_context():
        engine = db.engines[READ_REPLICA_BIND]
    app.extensions["read_replica"] = ReadReplica(engine, app.config["DATABASE_READ_RETRY_SECONDS"])


def read_replica(app: Flask | None = None) -> ReadReplica | None:
    """The app's replica, or None when history is read from the primary."""
    return (app or current_app).extensions.get("read_replica")


def read_history(read: Callable[[Engine], Read]) -> Read:
    """``read(engine)`` on the replica when there is one in use, else (or when it fails there) on the primary.

    Both engines run statements in autocommit mode (see ``extensions.run_statement``).
    """
    replica = read_replica()
    if replica is not None and replica.in_use:
        try:
            return read(replica.engine)
        except DBAPIError as error:
            if not _is_replica_failure(error):
                raise
            replica.failed(error)
    return read(db.engines[STATEMENTS_BIND])
