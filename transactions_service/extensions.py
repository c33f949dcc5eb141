"""The Flask extensions, created bare and bound to an app in ``create_app``."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any, NamedTuple

from flask import current_app
from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

from .config import STATEMENTS_BIND

# Stable constraint names, so that migrations and error mapping can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = JWTManager()


class _Prepared(NamedTuple):
    """A statement as a server-side prepared statement: its name, how to prepare it, how to run it."""

    name: str
    prepare: str
    execute: str


_PARAMETER = re.compile(r"%\((\w+)\)s")
# The connection.info key of the names prepared on that connection.
_PREPARED_ON_CONNECTION = "prepared_statements"
_UNDEFINED_PREPARED_STATEMENT = "26000"


@functools.lru_cache(maxsize=512)
def _prepared(statement: str) -> _Prepared:
    """The statement with its ``%(name)s`` parameters numbered (``$1``...), named by its text."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    body = _PARAMETER.sub(number, statement).replace("%%", "%")
    name = "ledger_" + hashlib.blake2b(statement.encode(), digest_size=8).hexdigest()
    arguments = ", ".join(f"%({parameter})s" for parameter in names)
    return _Prepared(name, f"PREPARE {name} AS {body}", f"EXECUTE {name}({arguments})" if names else f"EXECUTE {name}")


def _execute(connection: Any, cursor: Any, statement: str, params: Mapping[str, Any], prepare: bool) -> None:
    """Run the statement, as a prepared statement of this connection's if ``prepare``.

    Planning a statement of the ledger's (a spend: a dozen CTEs) costs as much
    as running it; a prepared statement is planned once per connection. The
    names prepared are kept with the connection (``connection.info``), which
    a new connection starts without.
    """
    if not prepare:
        cursor.execute(statement, params)
        return
    form = _prepared(statement)
    names = connection.info.setdefault(_PREPARED_ON_CONNECTION, set())
    if form.name not in names:
        cursor.execute(form.prepare)
        names.add(form.name)
    try:
        cursor.execute(form.execute, params)
    except Exception as error:
        if getattr(error, "pgcode", None) != _UNDEFINED_PREPARED_STATEMENT:
            raise
        # Gone from the session (DISCARD ALL, say): nothing ran, and autocommit left no transaction to
        # abort. Prepare everything again as needed, starting with this one.
        names.clear()
        cursor.execute(form.prepare)
        names.add(form.name)
        cursor.execute(form.execute, params)


# The connection of the transaction that ``one_transaction`` holds open, if any.
_HELD: ContextVar[Any] = ContextVar("held_transaction", default=None)


@contextmanager
def one_transaction() -> Iterator[None]:
    """Run the primary's statements inside this block on one connection, in one transaction: all or none.

    It commits when the block ends and rolls back when the block raises. Each
    statement runs under a savepoint of its own, so one that fails (a key
    recorded already, a lock waited for too long) is undone alone, as on its
    own it would be, and whoever called it handles the error as ever.
    """
    engine = db.engines[STATEMENTS_BIND]
    dbapi = engine.dialect.loaded_dbapi
    try:
        connection = engine.raw_connection()
    except dbapi.Error as error:  # no connection to be had: the database is away, as for any statement
        raise _wrapped(engine, "BEGIN", {}, error, dead=True) from error
    token = _HELD.set(connection)
    try:
        _control(connection, engine, "BEGIN")
        yield
        _control(connection, engine, "COMMIT")
    except BaseException:
        try:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        except Exception:  # the connection died: the server rolled the transaction back itself
            connection.invalidate()
        raise
    finally:
        _HELD.reset(token)
        connection.close()


def _control(connection: Any, engine: Engine, statement: str) -> None:
    """``BEGIN`` or ``COMMIT`` of a held transaction, its failure raised as SQLAlchemy's exception (a
    connection lost at the COMMIT leaves the outcome unknown: a 503 to retry, as any statement's)."""
    dbapi = engine.dialect.loaded_dbapi
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    except dbapi.Error as error:
        raise _wrapped(engine, statement, {}, error, dead=_dead(engine, connection, error)) from error


def _in_held(connection: Any, engine: Engine, statement: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """One statement of a held transaction, under a savepoint (not prepared: an error inside a
    transaction block leaves nothing to prepare again on)."""
    dbapi = engine.dialect.loaded_dbapi
    with connection.cursor() as cursor:
        try:
            cursor.execute("SAVEPOINT statement")
            try:
                cursor.execute(statement, params)
                rows = cursor.fetchall() if cursor.description is not None else []
            except dbapi.Error:
                # Undone alone; but a connection that died took the transaction with it, and then the
                # statement's own error (the connection lost) is the one to raise, not the undo's.
                with suppress(dbapi.Error):
                    cursor.execute("ROLLBACK TO SAVEPOINT statement")
                raise
            cursor.execute("RELEASE SAVEPOINT statement")
            return rows
        except dbapi.Error as error:
            raise _wrapped(engine, statement, params, error, dead=_dead(engine, connection, error)) from error


def _dead(engine: Engine, connection: Any, error: Exception) -> bool:
    """Whether a driver's error means the connection is gone, or that there was none to be had."""
    return connection is None or engine.dialect.is_disconnect(error, connection.dbapi_connection, None)


def _wrapped(engine: Engine, statement: str, params: Mapping[str, Any], error: Exception, *, dead: bool) -> DBAPIError:
    """A driver's error as SQLAlchemy's (``OperationalError``, ``IntegrityError``, ...), which the error
    handlers and the callers know, marked as a lost connection when it is one."""
    return DBAPIError.instance(statement, params, error, engine.dialect.loaded_dbapi.Error,
                               connection_invalidated=dead, dialect=engine.dialect)


def run_statement(
    statement: str, params: Mapping[str, Any], engine: Engine | None = None, *, repeatable: bool = False
) -> list[tuple[Any, ...]]:
    """Run one SQL statement on its own, in autocommit mode, and return its rows.

    ``engine`` defaults to the primary's autocommit pool (``STATEMENTS_BIND``).
    A single statement is atomic by itself, so the hot paths (``transactions.sql``)
    need no ``BEGIN`` or ``COMMIT`` round trip, and they go to the driver's
    cursor directly: SQLAlchemy's execution layer cost more CPU than the
    statement itself (BENCHMARKS.md). Errors are raised as SQLAlchemy's
    exceptions all the same (``IntegrityError``, ``OperationalError``).

    With ``DATABASE_PREPARED_STATEMENTS`` (the default on direct connections)
    each statement is prepared once per connection and then only executed.

    Its connections are not pinged before use (a round trip per request).
    A pooled connection found dead instead replaces the pool (the server went
    away, so every other pooled connection is as dead), and a ``repeatable``
    statement, one that is safe to run twice (a read, or a write protected by
    an idempotency key), is run once more on a fresh connection; any other
    fails with the error, since it may have been applied before the
    connection died.

    Inside ``one_transaction`` a statement for the primary runs on that
    transaction's connection instead, and is never retried.
    """
    held = _HELD.get()
    if held is not None and engine in (None, db.engines[STATEMENTS_BIND]):
        return _in_held(held, db.engines[STATEMENTS_BIND], statement, params)
    return _alone(engine or db.engines[STATEMENTS_BIND], statement, params, repeatable)


def _alone(engine: Engine, statement: str, params: Mapping[str, Any], repeatable: bool) -> list[tuple[Any, ...]]:
    """The statement on a pooled autocommit connection, once more on a fresh one if that one was dead."""
    dbapi = engine.dialect.loaded_dbapi
    prepare = current_app.config["DATABASE_PREPARED_STATEMENTS"]
    retry = repeatable
    while True:
        connection = None
        try:
            connection = engine.raw_connection()
            with connection.cursor() as cursor:
                _execute(connection, cursor, statement, params, prepare)
                return cursor.fetchall() if cursor.description is not None else []
        except dbapi.Error as error:
            # Not connected at all (the server is down), or the connection died under the statement.
            dead = _dead(engine, connection, error)
            if dead and connection is not None:
                connection.invalidate(error)
                engine.dispose(close=False)
                if retry:
                    retry = False
                    continue
            raise _wrapped(engine, statement, params, error, dead=dead) from error
        finally:
            if connection is not None:
                connection.close()
