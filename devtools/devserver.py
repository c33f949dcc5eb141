"""``make run``: the service on a laptop, with nothing installed but Python.

Keeps a random development secret and an embedded PostgreSQL under
``instance/`` (unless ``DATABASE_URL`` is set), applies migrations, seeds a
demo user, prints a token for the demo user and an API key for each demo
service, and serves the API with gunicorn. Ctrl-C or SIGTERM stops gunicorn
and then the database.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from .devdb import EmbeddedPostgres

INSTANCE = Path("instance")
DEV_CORS_ORIGINS = "http://127.0.0.1:3000,http://localhost:3000"
# The audience development tokens are issued for and checked against, as an identity provider's would be.
DEV_AUDIENCE = "transactions-service"
# A day: the longest JWT_MAX_LIFETIME_SECONDS accepts by default.
DEV_USER_TOKEN_SECONDS = 24 * 3600


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


def demo_service_keys() -> dict[str, str]:
    """An API key per demo service, kept in ``instance/service-keys.json`` and made anew when it no longer works."""
    from transactions_service import api_keys
    from transactions_service.cli import SERVICE_KEYS

    path = INSTANCE / "service-keys.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    keys = {}
    for name, scopes in SERVICE_KEYS.items():
        known = api_keys.find_active(saved.get(name, ""))
        if known is not None and known.name == name and known.scopes == frozenset(scopes):
            keys[name] = saved[name]
        else:
            keys[name] = api_keys.create(name, scopes).key
    if keys != saved:
        INSTANCE.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(keys, indent=2) + "\n")
    return keys


def print_credentials(user_token: str, service_keys: dict[str, str]) -> None:
    from transactions_service.cli import DEMO_USER_ID, SERVICE_KEYS

    print("\nCredentials (copy into your shell):", flush=True)
    print(f"  # the demo user's token (billing page), for 24 hours\n  export USER_TOKEN={user_token}")
    for variable, name in (
        ("PAYMENT_KEY", "payment-service"), ("GENERATION_KEY", "generation-service"), ("FEED_KEY", "finance-mirror"),
        ("WEBHOOKS_KEY", "webhooks-admin"),
    ):
        print(f"  # {name}'s API key ({' '.join(SERVICE_KEYS[name])})\n  export {variable}={service_keys[name]}")
    print(f"  export DEMO_USER_ID={DEMO_USER_ID}\n", flush=True)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("JWT_SECRET_KEY", development_secret())
    os.environ.setdefault("JWT_DECODE_AUDIENCE", DEV_AUDIENCE)
    os.environ.setdefault("CORS_ORIGINS", DEV_CORS_ORIGINS)
    os.environ.setdefault("LOG_FORMAT", "text")
    # Webhooks to a receiver on this machine (scripts/webhook_receiver.py), which production refuses.
    os.environ.setdefault("WEBHOOK_ALLOW_HTTP", "true")
    os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    embedded = None
    if not os.environ.get("DATABASE_URL"):
        embedded = EmbeddedPostgres((INSTANCE / "postgres").resolve()).start()
        os.environ["DATABASE_URL"] = embedded.ensure_database("transactions")
        print(f"Embedded PostgreSQL on 127.0.0.1:{embedded.port} (data in instance/postgres)", flush=True)

    from flask_migrate import upgrade

    from transactions_service import create_app
    from transactions_service.auth import issue_token
    from transactions_service.cli import DEMO_USER_ID, seed_demo

    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "5000")
    gunicorn = worker = None
    try:
        app = create_app()
        with app.app_context():
            upgrade()
            seed_demo()
            service_keys = demo_service_keys()
            user_token = issue_token(str(DEMO_USER_ID), expires_in=DEV_USER_TOKEN_SECONDS)
            from transactions_service.extensions import db

            for engine in db.engines.values():
                engine.dispose()
        print_credentials(user_token, service_keys)
        print(f"Serving on http://{host}:{port}  (Ctrl-C to stop)", flush=True)
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--workers", "2",
             "--bind", f"{host}:{port}", "wsgi:app"],
        )
        # The webhook worker beside it, stopped with it.
        worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "webhooks", "work"])
        return gunicorn.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (worker, gunicorn):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        if embedded is not None:
            embedded.stop()
            print("Stopped the embedded PostgreSQL.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
