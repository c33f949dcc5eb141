"""Flask commands: user tokens and demo data (API keys: test_api_keys.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from transactions_service.cli import DEMO_DAYS, DEMO_USER_ID, demo_history, parse_duration, tokens

from .conftest import REPO_ROOT, TEST_SECRET
from .helpers import bearer


def run(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    return result


def issue(*args, **environment):
    """`flask tokens issue ...` as the flask command runs it: without building the app."""
    environment = {"JWT_SECRET_KEY": TEST_SECRET, **environment}
    return CliRunner().invoke(tokens, ["issue", *args], env=environment)


def test_user_token_carries_only_sub_iat_exp(client):
    user_id = uuid.uuid4()
    result = issue("--user", str(user_id), "--expires-in", "15m")
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 900
    assert client.get("/api/balance", headers=bearer(token)).status_code == 200


def test_user_token_names_the_configured_audience_and_issuer():
    result = issue("--user", str(uuid.uuid4()), JWT_DECODE_AUDIENCE="transactions-service", JWT_DECODE_ISSUER="https://idp")
    claims = jwt.decode(result.output.strip(), TEST_SECRET, algorithms=["HS256"], audience="transactions-service")
    assert claims["iss"] == "https://idp"


def test_signing_a_user_token_needs_only_the_key_not_a_database():
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("DATABASE_", "JWT_"))}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "tokens", "issue", "--user", str(uuid.uuid4())],
        cwd=REPO_ROOT, env={**environment, "JWT_SECRET_KEY": TEST_SECRET}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"])["exp"] > time.time()


def test_signing_without_a_key_says_which_settings_to_give():
    result = CliRunner().invoke(tokens, ["issue", "--user", str(uuid.uuid4())], env={"JWT_SECRET_KEY": ""})
    assert result.exit_code != 0 and "JWT_SECRET_KEY" in result.output


def test_user_token_lives_at_most_a_day_by_default():
    user_id = str(uuid.uuid4())
    assert issue("--user", user_id, "--expires-in", "24h").exit_code == 0
    result = issue("--user", user_id, "--expires-in", "7d")
    assert result.exit_code != 0
    assert "JWT_MAX_LIFETIME_SECONDS" in result.output


@pytest.mark.parametrize(
    "args",
    [
        [],
        # Services use API keys (keys create); there are no service tokens to issue.
        ["--service", "payment-service", "--scope", "purchases:write"],
        ["--user", str(uuid.uuid4()), "--scope", "usage:write"],
        ["--user", "not-a-uuid"],
        ["--user", str(uuid.uuid4()), "--expires-in", "soon"],
    ],
)
def test_token_command_refuses_bad_arguments(args):
    assert issue(*args).exit_code != 0


def test_the_app_has_no_development_or_benchmark_commands(app):
    commands = set(app.cli.commands)
    assert "bench" not in commands and "tokens" not in commands
    assert {"keys", "demo", "idempotency", "transactions"} <= commands


def test_demo_seed_is_safe_to_run_twice(app, api):
    assert run(app, "demo", "seed").exit_code == 0
    assert run(app, "demo", "seed").exit_code == 0
    rows = api.all_history(DEMO_USER_ID)
    written = demo_history()
    # Every entry once (and, were any of the welcome grant left when it lapsed, its expiry).
    assert len([row for row in rows if row["type"] != "expiration"]) == len(written)
    oldest = datetime.fromisoformat(rows[-1]["created_at"])
    assert datetime.now(timezone.utc) - oldest > timedelta(days=DEMO_DAYS - 1)
    balance = api.balance(DEMO_USER_ID)
    assert balance["available"] >= 0 and balance["held"] == 50
    summary = api.client.get(f"/api/usage/summary?user_id={DEMO_USER_ID}&group_by=metadata.model",
                             headers=bearer(api.admin_token)).json
    assert {series["name"] for series in summary["series"]} >= {"image-large", "image-fast", "text-4k"}
    assert all(bucket["credits"] > 0 for bucket in summary["buckets"][:-1])


def test_prune_command_reports_what_it_deleted(app, api):
    api.purchase(api.register(), key="evt")
    result = run(app, "idempotency", "prune", "--older-than", "1d")
    assert result.exit_code == 0
    assert "deleted 0" in result.output


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("15m", 900), ("12h", 43200), ("90d", 7776000)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds
