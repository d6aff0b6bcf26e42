"""The store under test, for every contract module: the in-memory fake and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from coordinator.logstore import LogStore
from coordinator.memlog import MemLog
from coordinator.pglog import PgLog


@pytest.fixture(params=["mem", "pg"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The store under test: None for the fake, else a fresh log database's DSN. (A sync fixture:
    an async one cannot pull the async ``log_dsn`` lazily, and "mem" must not boot Postgres.)"""
    return str(request.getfixturevalue("log_dsn")) if request.param == "pg" else None


@pytest.fixture
async def store(backend: str | None) -> AsyncIterator[LogStore]:
    if backend is None:
        yield MemLog()
        return
    pg = PgLog.connect(backend, pool_size=2)
    try:
        yield pg
    finally:
        await pg.close()
