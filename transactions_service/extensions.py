"""The Flask extensions, created bare and bound to an app in ``create_app``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, MetaData, Row
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


def run_statement(statement: str, params: Mapping[str, Any], engine: Engine | None = None) -> list[Row[Any]]:
    """Run one SQL statement on its own, in autocommit mode, and return its rows.

    ``engine`` defaults to the primary's autocommit pool (``STATEMENTS_BIND``).
    A single statement is atomic by itself, so the hot paths (``transactions.sql``)
    skip the ``BEGIN`` and ``COMMIT`` round trips and SQLAlchemy's statement
    building; errors still arrive as SQLAlchemy exceptions, and a connection
    found dead is discarded with the rest of the pool.
    """
    with (engine or db.engines[STATEMENTS_BIND]).connect() as connection:
        return connection.exec_driver_sql(statement, params).all()
