"""The package's shape (docs/architecture.md): floors that import only downwards, short
functions, thin views, and no development module in what is installed."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "transactions_service"
# The floors, top down: entry points (the app factory, the views, the commands), the ledger, and the
# infrastructure every floor stands on. An import may go down or stay on its floor, never up.
TOP = {"transactions_service", "transactions_service.cli", "transactions_service.api", "transactions_service.relay"}
MIDDLE = {"transactions_service.ledger", "transactions_service.webhooks"}
MAX_FUNCTION_LINES = 50
MAX_VIEW_LINES = 10


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def floor(module: str) -> int:
    """0 for the top, 1 for the ledger, 2 for the infrastructure."""
    if module in TOP or any(module.startswith(top + ".") for top in TOP - {"transactions_service"}):
        return 0
    if any(module == middle or module.startswith(middle + ".") for middle in MIDDLE):
        return 1
    return 2


def imported(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            if node.module is None:  # from . import a, b: the modules a and b
                found.update(f"{base}.{alias.name}" for alias in node.names)
                continue
            target = f"{base}.{node.module}" if node.level else node.module
            if target.startswith("transactions_service"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("transactions_service"))
    return found


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_no_module_imports_from_a_floor_above_its_own(name, path):
    upward = sorted(target for target in imported(name, path) if floor(target) < floor(name))
    assert upward == [], f"{name} imports from above: {upward}"


def functions() -> list[tuple[str, ast.FunctionDef, bool]]:
    found = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                is_view = any(
                    isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") in {"get", "post", "put", "patch"}
                    for decorator in node.decorator_list
                )
                found.append((f"{name}.{node.name}:{node.lineno}", node, is_view))
    return found


def test_no_function_in_the_package_is_longer_than_fifty_lines():
    long = {name: node.end_lineno - node.lineno + 1 for name, node, _ in functions()
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert long == {}


def test_views_are_at_most_ten_lines():
    views = [(name, node) for name, node, is_view in functions() if is_view]
    assert len(views) >= 6
    long = {name: node.end_lineno - node.lineno + 1 for name, node in views
            if node.end_lineno - node.lineno + 1 > MAX_VIEW_LINES}
    assert long == {}


def test_the_installed_package_holds_no_development_module(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("transactions_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules_in_wheel = [name for name in names if name.endswith(".py")]
    assert any(name == "transactions_service/ledger/rules.py" for name in modules_in_wheel)
    assert all(name.startswith("transactions_service/") for name in modules_in_wheel), modules_in_wheel
    development = [name for name in modules_in_wheel if Path(name).stem in {"devdb", "devpooler", "devserver", "seed"}]
    assert development == []
