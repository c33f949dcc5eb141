"""The transactions service: the product's credit ledger over a JSON API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy.exc import DBAPIError

from . import config as settings
from .auth import init_auth
from .cli import init_cli
from .errors import register_error_handlers
from .extensions import db, migrate
from .http import init_http
from .limits import init_limits
from .observability import init_observability
from .replica import init_read_replica
from .pooling import init_pooling

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _end_transactions_quietly(app: Flask) -> None:
    """End each request's transaction before Flask-SQLAlchemy removes the session.

    A read leaves its transaction open until teardown. If the database went
    away in between (a restart), the rollback fails after the response was
    made; the connection is gone either way, so that failure must not turn
    the answer into a 500. Teardowns run in reverse order, so this runs first.
    """

    @app.teardown_appcontext
    def end_transaction(_error: BaseException | None) -> None:
        if not db.session.registry.has():  # this request never opened a session
            return
        try:
            db.session.rollback()
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment, with ``config`` taking precedence."""
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.config.update(settings.BASE_SETTINGS)
    app.config.update(settings.from_environment())
    app.config.update(config or {})
    settings.finalise(app.config)
    app.json.sort_keys = False  # keep fields in the documented order

    db.init_app(app)
    init_read_replica(app)
    _end_transactions_quietly(app)
    init_pooling(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    init_observability(app)
    init_auth(app)
    init_http(app)
    register_error_handlers(app)

    from .health import bp as health_bp
    from .api.events import bp as events_bp
    from .api.transactions import bp as transactions_bp
    from .api.users import bp as users_bp
    from .api.webhooks import bp as webhooks_bp

    if app.config["RATELIMIT_ENABLED"]:
        init_limits(app, unlimited=[health_bp])
    app.register_blueprint(health_bp)
    app.register_blueprint(transactions_bp)
    app.register_blueprint(users_bp)
    app.register_blueprint(events_bp)
    app.register_blueprint(webhooks_bp)
    init_cli(app)
    return app

