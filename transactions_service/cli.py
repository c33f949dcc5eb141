"""Flask commands: API keys, development tokens, demo data and housekeeping.

``flask --app wsgi tokens issue`` needs only the key settings, not a database:
the ``tokens`` group is a Flask plugin command (``setup.cfg``), which the
``flask`` command runs without building the app. Every other group runs in the
app, which needs ``DATABASE_URL``.
"""

from __future__ import annotations

import random
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import api_keys, relay
from .auth import Caller, issue_token
from .config import ConfigError, token_settings
from .errors import ApiError
from .ids import utcnow
from .ledger import idempotency, rules
from .ledger.models import TransactionStatus, TransactionType
from .scopes import (
    MANAGE_WEBHOOKS,
    READ_EVENTS,
    READ_TRANSACTIONS,
    SERVICE_SCOPES,
    WRITE_PURCHASES,
    WRITE_USAGE,
    WRITE_USERS,
    parse_scopes,
)
from .webhooks import endpoints as webhook_endpoints
from .webhooks import worker

keys = AppGroup("keys", help="API keys: the credentials of the product's services.")
# A plain click group, not an AppGroup: it runs without the app (see the module's docstring).
tokens = click.Group("tokens", help="User tokens for development, signed as the identity provider would.")
demo = AppGroup("demo", help="Demo data for development.")
idempotency_cli = AppGroup("idempotency", help="Idempotency-key housekeeping.")
transactions_cli = AppGroup("transactions", help="Ledger housekeeping.")
events_cli = AppGroup("events", help="The event feed's housekeeping, and its relay into JetStream.")
webhooks_cli = AppGroup("webhooks", help="The webhook worker.")

DEMO_USER_ID = uuid.UUID("3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10")

# The services this product runs, with the scopes each needs and no more.
SERVICE_KEYS = {
    "payment-service": [WRITE_PURCHASES, WRITE_USERS, READ_TRANSACTIONS],
    "generation-service": [WRITE_USAGE, READ_TRANSACTIONS],
    "finance-mirror": [READ_EVENTS],
    "webhooks-admin": [MANAGE_WEBHOOKS],
}

# A demo user's three months, made the same way every time: (days ago, type, amount, credits, description,
# status, metadata), oldest first. Packs bought when credits run low, a welcome grant that expires, a few
# generations a day on four models, a reversal of one that failed, and a generation still running.
_MODELS = {  # model: (credits per generation, description, share of generations)
    "image-large": (20, "Image generation (1024x1024)", 4),
    "image-fast": (6, "Image generation, fast (512x512)", 6),
    "video-5s": (35, "Video generation, 5 s", 1),
    "text-4k": (4, "Text generation, 4k tokens", 5),
}
_PACKS = [("9.99", 500, "Starter pack: 500 credits"), ("19.99", 1200, "Creator pack: 1,200 credits")]
DEMO_DAYS = 90


def demo_history() -> list[tuple[float, TransactionType, str, int, str, TransactionStatus, dict[str, str]]]:
    rng = random.Random(14)
    models, weights = list(_MODELS), [share for _credits, _description, share in _MODELS.values()]
    entries = [(DEMO_DAYS, TransactionType.PURCHASE, *_PACKS[0], TransactionStatus.COMPLETED, {}),
               (DEMO_DAYS - 0.1, TransactionType.GRANT, "0", 100, "Welcome bonus", TransactionStatus.COMPLETED, {})]
    available = 600
    for day in range(DEMO_DAYS - 1, 0, -1):
        for slot in sorted(rng.random() for _ in range(rng.randint(1, 7))):
            model = rng.choices(models, weights)[0]
            credits, description, _share = _MODELS[model]
            if available < credits + 50:
                amount, pack, name = _PACKS[rng.random() < 0.5]
                entries.append((day + 1 - slot - 0.01, TransactionType.PURCHASE, amount, pack, name,
                                TransactionStatus.COMPLETED, {}))
                available += pack
            entries.append((day + 1 - slot, TransactionType.USAGE, "0", -credits, description,
                            TransactionStatus.COMPLETED, {"model": model}))
            available -= credits
    entries.append((0, TransactionType.USAGE, "0", -50, "Upscale 4x", TransactionStatus.PENDING, {"model": "image-large"}))
    return entries


_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter("use a number with s, m, h or d, e.g. 90d")
    number, unit = int(match[1]), match[2]
    unit_name = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]
    return timedelta(**{unit_name: number})


def _print_issued(issued: api_keys.IssuedKey, *notes: str) -> None:
    """What was made, then the key itself as the last line (so that `| tail -n 1` captures it)."""
    click.echo(f"Created API key {issued.id} for {issued.name!r} ({' '.join(issued.scopes)}).")
    for note in notes:
        click.echo(note)
    click.echo("It is shown only this once: store it in the service's secrets now.")
    click.echo(issued.key)


@keys.command("create")
@click.option("--name", required=True, help="The service the key is for, e.g. payment-service.")
@click.option("--scope", "scope", required=True, help='Space-separated scopes, e.g. "usage:write transactions:read".')
@click.option("--expires-in", default=None, help="Make the key stop working after this long, e.g. 90d (default: never).")
def create_key(name: str, scope: str, expires_in: str | None) -> None:
    """Make a key; prints it once, as the last line."""
    lifetime = None if expires_in is None else parse_duration(expires_in)
    try:
        issued = api_keys.create(name, parse_scopes(scope), lifetime)
    except api_keys.KeyRequestError as error:
        raise click.UsageError(str(error)) from error
    _print_issued(issued)


@keys.command("list")
def list_keys() -> None:
    """Every key with its name, scopes and times; never a secret."""
    now = utcnow()
    rows = [("ID", "NAME", "SCOPES", "CREATED", "LAST USED", "STATUS")]
    for key in api_keys.all_keys():
        status = key.status(now)
        when = {"revoked": key.revoked_at, "expired": key.expires_at, "expiring": key.expires_at}.get(status)
        rows.append((
            key.id, key.name, " ".join(key.scopes), _moment(key.created_at), _moment(key.last_used_at),
            status if when is None else f"{'expires' if status == 'expiring' else status} {_moment(when)}",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _moment(value) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


@keys.command("revoke")
@click.argument("id_or_name")
def revoke_key(id_or_name: str) -> None:
    """Stop a key (by id), or every key of a service (by name), within API_KEY_CACHE_SECONDS."""
    try:
        revoked = api_keys.revoke(id_or_name)
    except api_keys.KeyRequestError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"revoked {len(revoked)} key(s): {', '.join(revoked)}")


@keys.command("rotate")
@click.argument("name")
@click.option("--grace", default="24h", show_default=True, help="How long the old keys keep working, e.g. 24h or 0s.")
def rotate_key(name: str, grace: str) -> None:
    """Make a new key for NAME with the same scopes; the old ones stop after the grace period."""
    try:
        issued = api_keys.rotate(name, parse_duration(grace))
    except api_keys.KeyRequestError as error:
        raise click.ClickException(str(error)) from error
    _print_issued(issued, f"The older keys of {name!r} keep working for {grace}, then stop (`keys list` shows when).")


@tokens.command("issue")
@click.option("--user", "user_id", type=click.UUID, required=True, help="The user the token is for.")
@click.option("--expires-in", default="1h", show_default=True, help="Lifetime, e.g. 15m or 12h (at most JWT_MAX_LIFETIME_SECONDS).")
def issue(user_id: uuid.UUID, expires_in: str) -> None:
    """Print a signed user token; needs only the key settings (services use API keys: `keys create`)."""
    try:
        settings = token_settings()
    except ConfigError as error:
        raise click.ClickException(str(error)) from error
    try:
        click.echo(issue_token(str(user_id), expires_in=int(parse_duration(expires_in).total_seconds()), config=settings))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--expires-in") from error


@demo.command("seed")
@click.option("--user", "user_id", type=click.UUID, default=str(DEMO_USER_ID), show_default=True)
def seed(user_id: uuid.UUID) -> None:
    """Register a demo user with a little history (safe to run again)."""
    seed_demo(user_id)
    click.echo(f"demo user {user_id} is ready")


def seed_demo(user_id: uuid.UUID = DEMO_USER_ID) -> None:
    """Write the demo history, each entry at its own moment, as the services would have (a rerun replays it)."""
    rules.register_user(user_id)
    seeder = Caller(name="demo-seed", scopes=SERVICE_SCOPES)
    now = utcnow()
    for index, (days_ago, kind, amount, credits, description, status, metadata) in enumerate(demo_history()):
        request = {
            "user_id": user_id, "type": kind, "amount": Decimal(amount), "credits": credits,
            "description": description, "status": status, "metadata": metadata,
        }
        if kind is TransactionType.GRANT:
            request["expires_in"] = 30 * 86400
        try:
            rules.record_transaction(seeder, request, f"demo-{user_id}-{index}", now=now - timedelta(days=days_ago))
        except ApiError as error:
            raise click.ClickException(f"demo row {index}: {error.detail}") from error


@idempotency_cli.command("prune")
@click.option("--older-than", required=True, help="Age, e.g. 90d. Keys younger than this are kept.")
def prune_keys(older_than: str) -> None:
    """Delete idempotency records older than the given age."""
    deleted = idempotency.prune(utcnow() - parse_duration(older_than))
    click.echo(f"deleted {deleted} idempotency records")


@transactions_cli.command("expire")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
def expire(batch_size: int) -> None:
    """Release lapsed holds and record the expiry of lapsed lots.

    Run it from cron or a scheduler, every few minutes; it is idempotent and safe to run concurrently.
    Reads and spends treat what has lapsed as gone at once; this records it.
    """
    holds, lots = rules.expire(
        batch_size, on_batch=lambda holds, lots: click.echo(f"released {holds} holds, expired {lots} lots so far", err=True)
    )
    click.echo(f"released {holds} holds, expired {lots} lots")


@events_cli.command("prune")
@click.option("--older-than", default=None, help="Age, e.g. 30d [default: EVENT_RETENTION_DAYS days].")
def prune_events(older_than: str | None) -> None:
    """Delete events and finished webhook deliveries older than the retention (EVENT_RETENTION_DAYS); run it daily.

    Safe to run concurrently. Deliveries still being retried stay until they finish.
    """
    age = timedelta(days=current_app.config["EVENT_RETENTION_DAYS"]) if older_than is None else parse_duration(older_than)
    events = rules.prune_events(utcnow() - age)
    deliveries = webhook_endpoints.prune_deliveries(utcnow() - age)
    click.echo(f"deleted {events} events and {deliveries} webhook deliveries")


@events_cli.command("relay")
def relay_events() -> None:
    """Relay the event feed into NATS JetStream (EVENTS_NATS_URL), from where it left off, until SIGTERM."""
    if not current_app.config.get("EVENTS_NATS_URL"):
        raise click.ClickException("EVENTS_NATS_URL is not set: name the NATS server to relay the feed to")
    published = relay.run(current_app._get_current_object(), relay.RelaySettings.from_config(current_app.config))
    click.echo(f"published {published} events")


@webhooks_cli.command("work")
def work() -> None:
    """Deliver the feed's events to the webhook endpoints, until SIGTERM (which lets deliveries in flight finish).

    Run one or more beside gunicorn; they share the work (SKIP LOCKED leases). With EVENTS_NATS_URL set,
    each also runs the JetStream relay, one of them publishing at a time.
    """
    app = current_app._get_current_object()
    relaying = None
    if app.config.get("EVENTS_NATS_URL"):  # the JetStream relay runs here too, on a thread of its own
        relaying = relay.RelayThread(app, relay.RelaySettings.from_config(app.config))
        relaying.start()
    try:
        worker.run(app, worker.WorkerSettings.from_config(app.config))
    finally:
        if relaying is not None:
            relaying.stop()


# The command's first name, kept so that schedulers set up before lots keep working.
transactions_cli.add_command(expire, "expire-holds")


def init_cli(app: Flask) -> None:
    for group in (keys, demo, idempotency_cli, transactions_cli, events_cli, webhooks_cli):
        app.cli.add_command(group)
