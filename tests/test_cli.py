"""Flask commands: user tokens and demo data (API keys: test_api_keys.py)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import jwt
import pytest

from transactions_service.cli import DEMO_HISTORY, DEMO_USER_ID, parse_duration

from .conftest import TEST_SECRET
from .helpers import bearer


def run(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    return result


def test_user_token_carries_only_sub_iat_exp(app, client):
    user_id = uuid.uuid4()
    result = run(app, "tokens", "issue", "--user", str(user_id), "--expires-in", "15m")
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 900
    assert client.get("/api/balance", headers=bearer(token)).status_code == 200


def test_user_token_lives_at_most_a_day_by_default(app):
    user_id = str(uuid.uuid4())
    assert run(app, "tokens", "issue", "--user", user_id, "--expires-in", "24h").exit_code == 0
    result = run(app, "tokens", "issue", "--user", user_id, "--expires-in", "7d")
    assert result.exit_code != 0
    assert "JWT_MAX_LIFETIME_SECONDS" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["tokens", "issue"],
        # Services use API keys (keys create); there are no service tokens to issue.
        ["tokens", "issue", "--service", "payment-service", "--scope", "purchases:write"],
        ["tokens", "issue", "--user", str(uuid.uuid4()), "--scope", "usage:write"],
        ["tokens", "issue", "--user", "not-a-uuid"],
        ["tokens", "issue", "--user", str(uuid.uuid4()), "--expires-in", "soon"],
    ],
)
def test_token_command_refuses_bad_arguments(app, args):
    assert run(app, *args).exit_code != 0


def test_demo_seed_is_safe_to_run_twice(app, api):
    assert run(app, "demo", "seed").exit_code == 0
    assert run(app, "demo", "seed").exit_code == 0
    rows = api.all_history(DEMO_USER_ID)
    assert len(rows) == len(DEMO_HISTORY)
    assert [row["description"] for row in rows] == [entry[3] for entry in reversed(DEMO_HISTORY)]
    oldest = datetime.fromisoformat(rows[-1]["created_at"])
    assert datetime.now(timezone.utc) - oldest > timedelta(days=21)
    balance = api.balance(DEMO_USER_ID)
    assert balance["available"] >= 0 and balance["held"] == 50


def test_prune_command_reports_what_it_deleted(app, api):
    api.purchase(api.register(), key="evt")
    result = run(app, "idempotency", "prune", "--older-than", "1d")
    assert result.exit_code == 0
    assert "deleted 0" in result.output


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("15m", 900), ("12h", 43200), ("90d", 7776000)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds
