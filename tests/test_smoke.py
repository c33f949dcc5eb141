"""scripts/smoke.py walks the callers' flows against a running service."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transactions_service import api_keys

from .conftest import REPO_ROOT, TEST_SECRET

pytestmark = pytest.mark.slow


def smoke(base_url, **env):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "smoke.py"), "--base-url", base_url],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def smoke_keys(service_token):
    return {
        "SMOKE_PAYMENT_KEY": service_token("purchases:write", "users:write", "transactions:read", name="smoke-payment"),
        "SMOKE_GENERATION_KEY": service_token("usage:write", "transactions:read", name="smoke-generation"),
    }


def test_smoke_passes_against_a_healthy_service_and_can_run_again(live_server, smoke_keys):
    for _ in range(2):
        result = smoke(live_server, JWT_SECRET_KEY=TEST_SECRET, **smoke_keys)
        assert result.returncode == 0, result.stdout + result.stderr
        steps = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
        assert len(steps) == 6
        assert result.stdout.strip().endswith("smoke test passed")


def test_smoke_fails_loudly_on_the_first_broken_step(live_server, smoke_keys):
    unknown_key = api_keys.generate().text
    result = smoke(live_server, JWT_SECRET_KEY=TEST_SECRET, **{**smoke_keys, "SMOKE_PAYMENT_KEY": unknown_key})
    assert result.returncode == 1
    assert "FAIL registering the smoke user answered 401" in result.stdout


def test_smoke_names_the_credentials_it_lacks():
    result = smoke("http://127.0.0.1:9")
    assert result.returncode != 0
    for variable in ("SMOKE_PAYMENT_KEY", "SMOKE_GENERATION_KEY", "SMOKE_USER_TOKEN"):
        assert variable in result.stderr


def test_smoke_fails_when_the_service_is_unreachable(smoke_keys):
    result = smoke("http://127.0.0.1:9", JWT_SECRET_KEY=TEST_SECRET, **smoke_keys)
    assert result.returncode == 1
    assert "no answer" in result.stdout
