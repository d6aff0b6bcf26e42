"""Shared fixtures: one embedded stack per test session (real Postgres clusters, real service
processes), and fresh migrated databases cloned from a template per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from migrations import upgrade
from tests.helpers import TEST_API_TOKEN
from tests.shared_pg import let_postgres_in
from txn_devstack.postgres import Cluster
from txn_devstack.stack import Stack, StackConfig, run_in_thread, run_sync

# Fast clocks for tests: short leases and claim intervals so recovery is quick to observe.
TEST_COORDINATOR_ENV = {
    "TXN_LEASE_S": "2",
    "TXN_RENEW_INTERVAL_S": "0.5",
    "TXN_CLAIM_INTERVAL_S": "0.2",
    "TXN_RESCHEDULE_INITIAL_S": "0.1",
    "TXN_RESCHEDULE_MAX_S": "1",
    "TXN_DEFAULT_TIMEOUT_S": "10",
    "TXN_CALL_TIMEOUT_S": "5",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak tests too")
    parser.addoption("--chaos-seed", type=int, default=1, help="seed of the chaos run")
    parser.addoption(
        "--chaos-duration",
        type=float,
        default=40.0,
        help="seconds of load and faults in the chaos run (the default run's short form: 40)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The chaos run lasts as long as asked, plus the boot and a bounded quiet period.
    chaos_timeout = float(config.getoption("--chaos-duration")) + 600
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.timeout(chaos_timeout))
    if config.getoption("--soak"):
        return
    deselected = [i for i in items if i.get_closest_marker("soak")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker("soak")]


@pytest.fixture(scope="session")
def state_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where the session's embedded stacks keep their data: a folder of its own, not under
    pytest's basetemp (a second pytest session resets that to mode 0700, which would lock the
    unprivileged Postgres of this one out of its data). Kept when a test failed, for its logs."""
    root = Path(tempfile.mkdtemp(prefix="txn-tests-"))
    let_postgres_in(root)
    yield root
    if request.session.testsfailed:
        print(f"\nthe embedded stacks' data and logs are kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "session",
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
            # The tests also run coordinators and SDKs in-process on these servers and make
            # databases of their own there: room beyond the stack's own services.
            spare_connections=250,
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def pg(stack: Stack) -> Cluster:
    """A real Postgres cluster for tests that need databases of their own."""
    return stack.clusters["log"]


_counter = itertools.count()
_templates: dict[str, str] = {}


async def _admin(cluster: Cluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.dsn("postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _template(cluster: Cluster, target: str) -> str:
    if target not in _templates:
        name = f"tmpl_{target}"
        run_sync(lambda: _admin(cluster, f'DROP DATABASE IF EXISTS "{name}"'))
        run_sync(lambda: _admin(cluster, f'CREATE DATABASE "{name}"'))
        run_in_thread(lambda: upgrade(cluster.dsn(name), target))
        _templates[target] = name
    return _templates[target]


async def create_db(cluster: Cluster, target: str | None) -> str:
    """A fresh database, migrated for ``target`` (cloned from a template), or empty."""
    name = f"t{os.getpid()}_{next(_counter)}"
    if target is None:
        await _admin(cluster, f'CREATE DATABASE "{name}"')
    else:
        template = _template(cluster, target)
        await _admin(cluster, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return cluster.dsn(name)


@pytest.fixture
async def log_dsn(pg: Cluster) -> AsyncIterator[str]:
    """A fresh, migrated coordinator log database."""
    yield await create_db(pg, "coordinator")


@pytest.fixture
async def ledger_dsn(pg: Cluster) -> AsyncIterator[str]:
    """A fresh, migrated ledger database."""
    yield await create_db(pg, "ledger")


@pytest.fixture
def exporters(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Tracing's exporters become in-memory ones, one per service that starts tracing (each
    service shuts its own down, which flushes its spans): read them with
    ``get_finished_spans()``."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from participants.sdk import tracing

    made: list[InMemorySpanExporter] = []

    def memory(_mode: str) -> InMemorySpanExporter:
        made.append(InMemorySpanExporter())
        return made[-1]

    monkeypatch.setattr(tracing, "make_exporter", memory)
    yield made
