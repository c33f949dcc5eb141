"""Faults under load, short version: every acknowledged write and every balance survives the crashes.

Runs ``scripts/faults.py --short`` (its own durable PostgreSQL, gunicorn and
client processes; about 20 s) and reads its Markdown report. ``make faults``
runs the long version and writes ``docs/reliability.md``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.faults import FAULT_KINDS

pytestmark = [
    pytest.mark.slow,
    # It starts, stops and kills its own PostgreSQL and gunicorn; a pooler in between would only be skipped over.
    pytest.mark.direct_only(reason="runs its own PostgreSQL, which it stops and restarts"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def report_table(report: str, caption: str) -> dict[str, list[str]]:
    """The rows of the table under ``caption``, keyed by their first cell."""
    lines = report.split(caption, 1)[1].strip().splitlines()
    rows = {}
    for line in lines[2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, str]:
    report_path = tmp_path_factory.mktemp("faults") / "reliability.md"
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "faults.py"), "--short", "--report", str(report_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return finished, report_path.read_text() if report_path.exists() else ""


def test_the_short_fault_run_exits_zero(short_run):
    finished, _ = short_run
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]


def test_the_short_fault_run_injects_every_kind_of_fault(short_run):
    _, report = short_run
    injected = report_table(report, "Faults injected:")
    assert set(injected) == set(FAULT_KINDS)
    assert {kind: int(count) for kind, (count,) in injected.items() if int(count) < 1} == {}


def test_every_check_of_the_short_fault_run_passes(short_run):
    _, report = short_run
    checks = report_table(report, "Checks:")
    assert len(checks) >= 10
    assert {name: cells for name, cells in checks.items() if cells[0] != "PASS"} == {}
