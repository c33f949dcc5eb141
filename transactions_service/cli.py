"""Flask commands: tokens, demo data and idempotency-key housekeeping."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import update

from .auth import SERVICE_SCOPES, Caller, issue_token
from .bench_seed import bench_cli
from .errors import ApiError
from .extensions import db
from .idempotency import prune
from .ids import utcnow
from .transactions import service as ledger
from .transactions.models import TransactionStatus, TransactionType, UserTransaction
from .users.service import register_user

tokens = AppGroup("tokens", help="Issue tokens for development and for configuring the other services.")
demo = AppGroup("demo", help="Demo data for development.")
idempotency_cli = AppGroup("idempotency", help="Idempotency-key housekeeping.")
transactions_cli = AppGroup("transactions", help="Ledger housekeeping.")

DEMO_USER_ID = uuid.UUID("3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10")

# The services this product runs, with the scopes each needs and no more.
SERVICE_TOKENS = {
    "payment-service": ["purchases:write", "users:write", "transactions:read"],
    "generation-service": ["usage:write", "transactions:read"],
}

# (type, amount, credits, description, status, how long ago), oldest first.
DEMO_HISTORY = [
    (TransactionType.PURCHASE, "9.99", 500, "Starter pack: 500 credits", TransactionStatus.COMPLETED, timedelta(days=21, hours=3)),
    (TransactionType.USAGE, "0", -20, "Image generation (1024x1024)", TransactionStatus.COMPLETED, timedelta(days=19, hours=7)),
    (TransactionType.USAGE, "0", -35, "Video generation, 5 s", TransactionStatus.COMPLETED, timedelta(days=12, hours=1)),
    (TransactionType.PURCHASE, "19.99", 1200, "Creator pack: 1,200 credits", TransactionStatus.FAILED, timedelta(days=9, hours=2)),
    (TransactionType.PURCHASE, "19.99", 1200, "Creator pack: 1,200 credits", TransactionStatus.COMPLETED, timedelta(days=9, hours=1)),
    (TransactionType.USAGE, "0", -8, "Text generation, 4k tokens", TransactionStatus.COMPLETED, timedelta(days=2, hours=5)),
    (TransactionType.USAGE, "0", -50, "Upscale 4x", TransactionStatus.PENDING, timedelta(0)),
]

_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter("use a number with s, m, h or d, e.g. 90d")
    number, unit = int(match[1]), match[2]
    unit_name = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]
    return timedelta(**{unit_name: number})


@tokens.command("issue")
@click.option("--user", "user_id", type=click.UUID, help="Issue a user token for this user id.")
@click.option("--service", "service_name", help="Issue a service token with this name as subject.")
@click.option("--scope", default="", help='Space-separated scopes for a service token, e.g. "usage:write".')
@click.option("--expires-in", default="1h", show_default=True, help="Lifetime, e.g. 15m, 12h, 30d.")
def issue(user_id: uuid.UUID | None, service_name: str | None, scope: str, expires_in: str) -> None:
    """Print a signed token."""
    lifetime = int(parse_duration(expires_in).total_seconds())
    if (user_id is None) == (service_name is None):
        raise click.UsageError("give exactly one of --user and --service")
    if user_id is not None:
        if scope:
            raise click.UsageError("user tokens carry no scope")
        click.echo(issue_token(str(user_id), expires_in=lifetime))
        return
    scopes = scope.split()
    unknown = sorted(set(scopes) - SERVICE_SCOPES)
    if not scopes or unknown:
        raise click.UsageError(f"--scope needs one or more of: {', '.join(sorted(SERVICE_SCOPES))}")
    click.echo(issue_token(service_name, scopes=scopes, expires_in=lifetime))


@demo.command("seed")
@click.option("--user", "user_id", type=click.UUID, default=str(DEMO_USER_ID), show_default=True)
def seed(user_id: uuid.UUID) -> None:
    """Register a demo user with a little history (safe to run again)."""
    seed_demo(user_id)
    click.echo(f"demo user {user_id} is ready")


def seed_demo(user_id: uuid.UUID = DEMO_USER_ID) -> None:
    register_user(user_id)
    seeder = Caller(name="demo-seed", scopes=SERVICE_SCOPES)
    now = utcnow()
    for index, (kind, amount, credits, description, status, age) in enumerate(DEMO_HISTORY):
        payload = {
            "user_id": user_id,
            "type": kind,
            "amount": Decimal(amount),
            "credits": credits,
            "description": description,
            "status": status,
        }
        try:
            recorded = ledger.record_transaction(seeder, payload, f"demo-{user_id}-{index}")
        except ApiError as error:
            raise click.ClickException(f"demo row {index}: {error.detail}") from error
        if age and not recorded.replayed:
            # Demo data only: spread the history over the past weeks, as a real one would be.
            db.session.execute(
                update(UserTransaction)
                .where(UserTransaction.id == recorded.transaction_id)
                .values(created_at=now - age, updated_at=now - age)
            )
            db.session.commit()


@idempotency_cli.command("prune")
@click.option("--older-than", required=True, help="Age, e.g. 90d. Keys younger than this are kept.")
def prune_keys(older_than: str) -> None:
    """Delete idempotency records older than the given age."""
    deleted = prune(utcnow() - parse_duration(older_than))
    click.echo(f"deleted {deleted} idempotency records")


@transactions_cli.command("expire-holds")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
def expire_holds(batch_size: int) -> None:
    """Fail pending usage whose hold has lapsed and release its credits.

    Run it from cron or a scheduler; it is idempotent and safe to run concurrently.
    """
    total = ledger.expire_holds(batch_size, on_batch=lambda done: click.echo(f"expired {done} holds so far", err=True))
    click.echo(f"expired {total} holds")


def init_cli(app: Flask) -> None:
    for group in (tokens, demo, idempotency_cli, transactions_cli, bench_cli):
        app.cli.add_command(group)
