"""The product makes its HTTP calls with one client (txn_client/http11.py): no module it
ships imports aiohttp or httpx, and neither is a runtime dependency (docs/decisions.md, "One
HTTP client")."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "coordinator",
    "participants",
    "sagas",
    "txn_client",
    "migrations",
    "txn_devstack",
    "txn_bench",
]
OTHER_CLIENTS = {"aiohttp", "httpx", "requests", "urllib3"}
# Run from the source tree with the dev extra, never by `txn`: the comparison of the other
# clients with ours, and the takeover bench, which drives a test's scenario (tests use httpx).
DEV_ONLY = {Path("txn_bench/http_clients.py"), Path("txn_bench/takeover.py")}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_shipped_module_imports_another_http_client() -> None:
    offenders = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in DEV_ONLY:
                continue
            found = imported_roots(path.read_text()) & OTHER_CLIENTS
            if found:
                offenders[str(relative)] = sorted(found)
    assert offenders == {}


def test_the_finder_sees_imports() -> None:
    # Keeps the check above able to fail: both import forms are found.
    assert imported_roots("import aiohttp\nfrom httpx import AsyncClient\n") == {
        "aiohttp",
        "httpx",
    }


def test_other_clients_are_not_runtime_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for dep in project["dependencies"]
    }
    assert names & OTHER_CLIENTS == set()
    assert "httptools" in names  # the lean client's parser
