"""The Flask extensions, created bare and bound to an app in ``create_app``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

    Its connections are not pinged before use (a round trip per request).
    A pooled connection found dead instead replaces the pool (the server went
    away, so every other pooled connection is as dead), and a ``repeatable``
    statement, one that is safe to run twice (a read, or a write protected by
    an idempotency key), is run once more on a fresh connection; any other
    fails with the error, since it may have been applied before the
    connection died.
    """
    engine = engine or db.engines[STATEMENTS_BIND]
    dbapi = engine.dialect.loaded_dbapi
    retry = repeatable
    while True:
        connection = None
        try:
            connection = engine.raw_connection()
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return cursor.fetchall() if cursor.description is not None else []
        except dbapi.Error as error:
            # Not connected at all (the server is down), or the connection died under the statement.
            dead = connection is None or engine.dialect.is_disconnect(error, connection.dbapi_connection, None)
            if dead and connection is not None:
                connection.invalidate(error)
                engine.dispose(close=False)
                if retry:
                    retry = False
                    continue
            raise DBAPIError.instance(
                statement, params, error, dbapi.Error, connection_invalidated=dead, dialect=engine.dialect
            ) from error
        finally:
            if connection is not None:
                connection.close()
