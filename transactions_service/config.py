"""Configuration, read once from the environment.

Secrets have no defaults: the service refuses to start without a database URL
and a token verification key, rather than run with a guessable one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


# A metadata key, on a write, in a history filter, and in USAGE_GROUP_KEYS (here, below every module).
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,40}$"
STATEMENTS_BIND = "statements"
# The engine of the streaming replica that history is read from, when DATABASE_READ_URL is set.
READ_REPLICA_BIND = "read_replica"
# libpq's shortest: what a replica host that does not answer costs a history read, once per retry window.
REPLICA_CONNECT_TIMEOUT_SECONDS = 2


class ConfigError(RuntimeError):
    """The service cannot start with this configuration."""


def normalise_database_url(url: str) -> str:
    """Point plain PostgreSQL URLs at psycopg2, the driver this service ships with.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which is not installed.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _number(env: Mapping[str, str], name: str, default: Any, parse: Callable[[str], Any], what: str) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    return _number(env, name, default, int, "an integer")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    seconds = _number(env, name, default, float, "a number of seconds")
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds")
    return seconds


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.lower() not in ("0", "false", "no", "off")


def _list(env: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in env.get(name, "").split(",") if item.strip()]


def _event_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The event feed's: retention, low-balance alerts, the JetStream relay."""
    return {
        "EVENT_RETENTION_DAYS": _int(env, "EVENT_RETENTION_DAYS", 30),
        "LOW_BALANCE_THRESHOLD": _int(env, "LOW_BALANCE_THRESHOLD", None),
        "EVENTS_NATS_URL": env.get("EVENTS_NATS_URL") or None,
        "EVENTS_NATS_STREAM": env.get("EVENTS_NATS_STREAM") or "LEDGER",
        "EVENTS_RELAY_LEASE_SECONDS": _seconds(env, "EVENTS_RELAY_LEASE_SECONDS", 15),
    }


def _rate_limit_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The rate limits: per caller, per address, and where the counts are shared (docs/operations.md)."""
    return {
        "RATELIMIT_ENABLED": _bool(env, "RATELIMIT_ENABLED", True),
        "RATELIMIT_HEADERS_ENABLED": _bool(env, "RATELIMIT_HEADERS_ENABLED", True),
        "RATELIMIT_DEFAULT": env.get("RATELIMIT_DEFAULT") or "300 per minute",
        "RATELIMIT_SERVICE_DEFAULT": env.get("RATELIMIT_SERVICE_DEFAULT") or "20000 per minute",
        "RATELIMIT_PER_ADDRESS": env.get("RATELIMIT_PER_ADDRESS") or "1000 per minute",
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI") or "memory://",
        # Windows that slide: a fixed window lets twice the limit through across its edge.
        "RATELIMIT_STRATEGY": env.get("RATELIMIT_STRATEGY") or "sliding-window-counter",
    }


def _report_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Exports and usage summaries: how big an export may be, which metadata keys a summary splits by."""
    return {
        "EXPORT_MAX_ROWS": _int(env, "EXPORT_MAX_ROWS", 1_000_000),
        # Named before the usage is written, as a meter's dimensions are: the rollup keeps these keys' values.
        "USAGE_GROUP_KEYS": _list(env, "USAGE_GROUP_KEYS") if env.get("USAGE_GROUP_KEYS") is not None else ["model"],
    }


_RETRY_SCHEDULE = "0,5,300,1800,7200,18000,36000,36000"  # immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h


def _schedule(env: Mapping[str, str]) -> list[float]:
    raw = env.get("WEBHOOK_RETRY_SCHEDULE") or _RETRY_SCHEDULE
    try:
        schedule = [float(part) for part in raw.split(",")]
    except ValueError as exc:
        raise ConfigError(f"WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, got {raw!r}") from exc
    if not schedule or min(schedule) < 0:
        raise ConfigError("WEBHOOK_RETRY_SCHEDULE must list at least one delay, none negative")
    return schedule


def _webhook_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The webhook worker's: retries, timeouts, leases, and where it may send (docs/security.md, API7)."""
    return {
        "WEBHOOK_RETRY_SCHEDULE": _schedule(env),
        "WEBHOOK_TIMEOUT_SECONDS": _int(env, "WEBHOOK_TIMEOUT_SECONDS", 10),
        "WEBHOOK_LEASE_SECONDS": _int(env, "WEBHOOK_LEASE_SECONDS", 60),
        "WEBHOOK_DISABLE_AFTER_DAYS": _int(env, "WEBHOOK_DISABLE_AFTER_DAYS", 5),
        "WEBHOOK_CONCURRENCY": _int(env, "WEBHOOK_CONCURRENCY", 32),
        "WEBHOOK_ENDPOINT_CONCURRENCY": _int(env, "WEBHOOK_ENDPOINT_CONCURRENCY", 16),
        "WEBHOOK_ALLOW_HTTP": _bool(env, "WEBHOOK_ALLOW_HTTP", False),
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": _bool(env, "WEBHOOK_ALLOW_PRIVATE_NETWORKS", False),
        "WEBHOOK_POLL_SECONDS": _seconds(env, "WEBHOOK_POLL_SECONDS", 1.0),
        # A connection past any transaction pooler, for the worker's LISTEN and nothing else.
        "DATABASE_DIRECT_URL": env.get("DATABASE_DIRECT_URL") or None,
    }


def from_environment(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings that come from environment variables (the table in docs/configuration.md)."""
    env = os.environ if env is None else env
    settings: dict[str, Any] = {
        "DATABASE_URL": env.get("DATABASE_URL"),
        "DATABASE_READ_URL": env.get("DATABASE_READ_URL") or None,
        "DATABASE_READ_RETRY_SECONDS": _int(env, "DATABASE_READ_RETRY_SECONDS", 5),
        "JWT_SECRET_KEY": env.get("JWT_SECRET_KEY") or None,
        "JWT_PUBLIC_KEY": env.get("JWT_PUBLIC_KEY") or None,
        "JWT_PRIVATE_KEY": env.get("JWT_PRIVATE_KEY") or None,
        "JWT_JWKS_URL": env.get("JWT_JWKS_URL") or None,
        "JWT_ALGORITHM": env.get("JWT_ALGORITHM") or None,
        "JWT_DECODE_AUDIENCE": env.get("JWT_DECODE_AUDIENCE") or None,
        "JWT_DECODE_ISSUER": env.get("JWT_DECODE_ISSUER") or None,
        "JWT_JWKS_CACHE_SECONDS": _int(env, "JWT_JWKS_CACHE_SECONDS", 300),
        "JWT_JWKS_REFRESH_COOLDOWN_SECONDS": _int(env, "JWT_JWKS_REFRESH_COOLDOWN_SECONDS", 30),
        "TOKEN_CACHE_SIZE": _int(env, "TOKEN_CACHE_SIZE", 4096),
        "TOKEN_CACHE_SECONDS": _int(env, "TOKEN_CACHE_SECONDS", 300),
        "JWT_MAX_LIFETIME_SECONDS": _int(env, "JWT_MAX_LIFETIME_SECONDS", 86_400),
        "API_KEY_CACHE_SECONDS": _int(env, "API_KEY_CACHE_SECONDS", 10),
        # Named so as not to collide with flask-jwt-extended's own setting, which stays "sub".
        "USER_IDENTITY_CLAIM": env.get("JWT_IDENTITY_CLAIM") or "sub",
        "CORS_ORIGINS": _list(env, "CORS_ORIGINS"),
        "DATABASE_POOL_SIZE": _int(env, "DATABASE_POOL_SIZE", 5),
        "DATABASE_MAX_OVERFLOW": _int(env, "DATABASE_MAX_OVERFLOW", 5),
        "DATABASE_POOL_TIMEOUT": _int(env, "DATABASE_POOL_TIMEOUT", 10),
        "DATABASE_POOL_PRE_PING": _bool(env, "DATABASE_POOL_PRE_PING", True),
        "DATABASE_POOL_RECYCLE_SECONDS": _int(env, "DATABASE_POOL_RECYCLE_SECONDS", 300),
        "DATABASE_STATEMENT_TIMEOUT_MS": _int(env, "DATABASE_STATEMENT_TIMEOUT_MS", 10_000),
        "DATABASE_LOCK_TIMEOUT_MS": _int(env, "DATABASE_LOCK_TIMEOUT_MS", 5_000),
        "DATABASE_CONNECT_OPTIONS": _bool(env, "DATABASE_CONNECT_OPTIONS", True),
        "DATABASE_PREPARED_STATEMENTS": _bool(env, "DATABASE_PREPARED_STATEMENTS", None),  # see finalise_database
        "HOLD_TTL_SECONDS": _int(env, "HOLD_TTL_SECONDS", 3600),
        **_event_settings(env),
        **_report_settings(env),
        **_webhook_settings(env),
        "LOG_FORMAT": env.get("LOG_FORMAT") or "json",
        "LOG_LEVEL": (env.get("LOG_LEVEL") or "INFO").upper(),
        "METRICS_TOKEN": env.get("METRICS_TOKEN") or None,
        **_rate_limit_settings(env),
        # How many proxies in front of the service set X-Forwarded-For (and -Proto): 0 trusts none.
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0),
    }
    return {key: value for key, value in settings.items() if value is not None}


def finalise(config: dict[str, Any]) -> None:
    """Validate the merged settings and derive what the extensions read."""
    finalise_database(config)
    finalise_tokens(config)
    finalise_service(config)


def _postgresql_url(url: str, name: str, what: str) -> str:
    url = normalise_database_url(url)
    if not url.startswith("postgresql"):
        raise ConfigError(f"{name} must be a PostgreSQL URL{what}")
    return url


def _engine_options(config: dict[str, Any]) -> dict[str, Any]:
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    # Behind PgBouncer, which refuses the `options` startup parameter, the
    # timeouts are the role's settings instead (docs/scaling.md: Behind PgBouncer).
    if config.get("DATABASE_CONNECT_OPTIONS", True):
        connect_args["options"] = (
            f"-c statement_timeout={config['DATABASE_STATEMENT_TIMEOUT_MS']} "
            f"-c lock_timeout={config['DATABASE_LOCK_TIMEOUT_MS']}"
        )
    return {
        "pool_size": config["DATABASE_POOL_SIZE"],
        "max_overflow": config["DATABASE_MAX_OVERFLOW"],
        "pool_timeout": config["DATABASE_POOL_TIMEOUT"],
        "pool_pre_ping": config["DATABASE_POOL_PRE_PING"],
        # Reconnect before a load balancer or pooler drops an idle connection (no pre-ping to notice).
        "pool_recycle": config["DATABASE_POOL_RECYCLE_SECONDS"],
        "connect_args": connect_args,
        **config.get("SQLALCHEMY_ENGINE_OPTIONS", {}),
    }


def finalise_database(config: dict[str, Any]) -> None:
    """The primary's two pools, and the replica's, from DATABASE_URL and DATABASE_READ_URL."""
    url = config.get("DATABASE_URL") or config.get("SQLALCHEMY_DATABASE_URI")
    if not url:
        raise ConfigError(
            "DATABASE_URL is not set: point it at a PostgreSQL database "
            "(`make run` starts an embedded one for development)"
        )
    url = _postgresql_url(url, "DATABASE_URL", "; no other database is supported")
    config["SQLALCHEMY_DATABASE_URI"] = url
    # LISTEN needs a session of its own, which a pooler in transaction mode does not keep: there the
    # worker polls unless DATABASE_DIRECT_URL names the server itself.
    direct = config.get("DATABASE_DIRECT_URL") or (url if config.get("DATABASE_CONNECT_OPTIONS", True) else None)
    config["DATABASE_DIRECT_URL"] = direct and _postgresql_url(direct, "DATABASE_DIRECT_URL", "")
    # A pooler in transaction mode hands each statement any server connection, which may not have
    # the statement prepared: prepare only on connections of our own.
    config.setdefault("DATABASE_PREPARED_STATEMENTS", config.get("DATABASE_CONNECT_OPTIONS", True))
    engine_options = _engine_options(config)
    config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options
    # The single statements run on connections that stay in autocommit mode
    # (extensions.run_statement); a pool of their own, so that no connection
    # switches modes (psycopg2 would send a SET each way). Nothing to roll back
    # there, so none is sent when a connection is returned; never pinged:
    # run_statement repeats what is safe to repeat on a fresh connection instead.
    autocommit = {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None, "pool_pre_ping": False}
    config.setdefault("SQLALCHEMY_BINDS", {})
    config["SQLALCHEMY_BINDS"].setdefault(STATEMENTS_BIND, {"url": url, **engine_options, **autocommit})
    read_url = config.get("DATABASE_READ_URL")
    if read_url:
        read_url = _postgresql_url(read_url, "DATABASE_READ_URL", " (a streaming replica of DATABASE_URL)")
        config["DATABASE_READ_URL"] = read_url
        # History's replica (replica.py): like the primary's autocommit pool, with a short connect
        # timeout, because a failed read falls back to the primary instead.
        connect_args = {**engine_options.get("connect_args", {}), "connect_timeout": REPLICA_CONNECT_TIMEOUT_SECONDS}
        config["SQLALCHEMY_BINDS"].setdefault(
            READ_REPLICA_BIND, {"url": read_url, **engine_options, **autocommit, "connect_args": connect_args}
        )


def finalise_tokens(config: dict[str, Any]) -> None:
    """The one key source and algorithm user tokens are verified (and, in development, signed) with."""
    if config["JWT_MAX_LIFETIME_SECONDS"] < 1:
        raise ConfigError("JWT_MAX_LIFETIME_SECONDS must be at least 1")
    key_sources = [name for name in ("JWT_SECRET_KEY", "JWT_PUBLIC_KEY", "JWT_JWKS_URL") if config.get(name)]
    if not key_sources:
        raise ConfigError(
            "No token verification key: set JWT_SECRET_KEY (HS256), JWT_PUBLIC_KEY with "
            "JWT_ALGORITHM (RS256/ES256), or JWT_JWKS_URL. There is no built-in default."
        )
    if len(key_sources) > 1:
        raise ConfigError(f"Set exactly one of JWT_SECRET_KEY, JWT_PUBLIC_KEY, JWT_JWKS_URL (got {', '.join(key_sources)})")
    source = key_sources[0]
    algorithm = config.get("JWT_ALGORITHM") or ("HS256" if source == "JWT_SECRET_KEY" else "RS256")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise ConfigError(f"JWT_ALGORITHM {algorithm!r} is not supported; use one of {', '.join(SUPPORTED_ALGORITHMS)}")
    if (source == "JWT_SECRET_KEY") != algorithm.startswith("HS"):
        raise ConfigError(f"JWT_ALGORITHM {algorithm} does not fit {source}: HS* needs JWT_SECRET_KEY, RS*/ES* a public key")
    if source == "JWT_SECRET_KEY" and len(config["JWT_SECRET_KEY"]) < 32:
        raise ConfigError("JWT_SECRET_KEY must be at least 32 characters long")
    config["JWT_KEY_SOURCE"] = source
    config["JWT_ALGORITHM"] = algorithm
    config["JWT_DECODE_ALGORITHMS"] = [algorithm]
    # flask-jwt-extended settings that this service fixes.
    config["JWT_TOKEN_LOCATION"] = ["headers"]
    config["JWT_IDENTITY_CLAIM"] = "sub"


def finalise_service(config: dict[str, Any]) -> None:
    """Logging, holds, events, API keys and the proxies in front."""
    if config["LOG_FORMAT"] not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be 'json' or 'text'")
    config.setdefault("LOW_BALANCE_THRESHOLD", None)  # unset: no alerts but a user's own
    if config["LOW_BALANCE_THRESHOLD"] is not None and config["LOW_BALANCE_THRESHOLD"] < 0:
        raise ConfigError("LOW_BALANCE_THRESHOLD must be 0 or more, or unset")
    for name in ("WEBHOOK_TIMEOUT_SECONDS", "WEBHOOK_LEASE_SECONDS", "WEBHOOK_DISABLE_AFTER_DAYS", "WEBHOOK_CONCURRENCY"):
        if config.get(name, 1) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config["EVENT_RETENTION_DAYS"] < 1:
        raise ConfigError("EVENT_RETENTION_DAYS must be at least 1")
    if config["HOLD_TTL_SECONDS"] < 1:
        raise ConfigError("HOLD_TTL_SECONDS must be at least 1")
    if config["EXPORT_MAX_ROWS"] < 1:
        raise ConfigError("EXPORT_MAX_ROWS must be at least 1")
    if bad := [key for key in config["USAGE_GROUP_KEYS"] if not re.fullmatch(METADATA_KEY_PATTERN[1:-1], key)]:
        raise ConfigError(f"USAGE_GROUP_KEYS must be metadata keys (1-40 of A-Z a-z 0-9 _ . -), got {bad[0]!r}")
    if config["API_KEY_CACHE_SECONDS"] < 0:
        raise ConfigError("API_KEY_CACHE_SECONDS must not be negative")
    if config["TRUSTED_PROXIES"] < 0:
        raise ConfigError("TRUSTED_PROXIES must not be negative")


def token_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What signing a development user token needs: the key settings only, validated, with no database."""
    config = from_environment(env)
    finalise_tokens(config)
    return config


BASE_SETTINGS: dict[str, Any] = {
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "SQLALCHEMY_TRACK_MODIFICATIONS": False,
    "PROPAGATE_EXCEPTIONS": False,
    "DEBUG": False,
}
