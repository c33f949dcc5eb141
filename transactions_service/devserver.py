"""``make run``: the service on a laptop, with nothing installed but Python.

Keeps a random development secret and an embedded PostgreSQL under
``instance/`` (unless ``DATABASE_URL`` is set), applies migrations, seeds a
demo user, prints tokens for the three callers and serves the API with
gunicorn. Ctrl-C or SIGTERM stops gunicorn and then the database.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .devdb import EmbeddedPostgres

INSTANCE = Path("instance")
DEV_CORS_ORIGINS = "http://127.0.0.1:3000,http://localhost:3000"


def development_secret() -> str:
    """A random HS256 secret, made once and kept (readable by the owner only)."""
    path = INSTANCE / "jwt-secret"
    if not path.exists():
        INSTANCE.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def print_tokens(app) -> None:
    from .auth import issue_token
    from .cli import DEMO_USER_ID, SERVICE_TOKENS

    with app.app_context():
        lines = [
            ("demo user (billing page)", issue_token(str(DEMO_USER_ID), expires_in=7 * 24 * 3600)),
            *(
                (f"{name} ({' '.join(scopes)})", issue_token(name, scopes=scopes, expires_in=30 * 24 * 3600))
                for name, scopes in SERVICE_TOKENS.items()
            ),
        ]
    print("\nTokens (copy into your shell):", flush=True)
    variables = ["USER_TOKEN", "PAYMENT_TOKEN", "GENERATION_TOKEN"]
    for variable, (label, token) in zip(variables, lines):
        print(f"  # {label}\n  export {variable}={token}")
    print(f"  export DEMO_USER_ID={DEMO_USER_ID}\n", flush=True)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("JWT_SECRET_KEY", development_secret())
    os.environ.setdefault("CORS_ORIGINS", DEV_CORS_ORIGINS)
    os.environ.setdefault("LOG_FORMAT", "text")
    embedded = None
    if not os.environ.get("DATABASE_URL"):
        embedded = EmbeddedPostgres((INSTANCE / "postgres").resolve()).start()
        os.environ["DATABASE_URL"] = embedded.ensure_database("transactions")
        print(f"Embedded PostgreSQL on 127.0.0.1:{embedded.port} (data in instance/postgres)", flush=True)

    from flask_migrate import upgrade

    from . import create_app
    from .cli import seed_demo

    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "5000")
    gunicorn = None
    try:
        app = create_app()
        with app.app_context():
            upgrade()
            seed_demo()
            from .extensions import db

            db.engine.dispose()
        print_tokens(app)
        print(f"Serving on http://{host}:{port}  (Ctrl-C to stop)", flush=True)
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--workers", "2",
             "--bind", f"{host}:{port}", "wsgi:app"],
        )
        return gunicorn.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if gunicorn is not None and gunicorn.poll() is None:
            gunicorn.terminate()
            gunicorn.wait(timeout=30)
        if embedded is not None:
            embedded.stop()
            print("Stopped the embedded PostgreSQL.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
