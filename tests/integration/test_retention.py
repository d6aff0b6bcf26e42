"""Retention end to end on a Postgres log: a coordinator's round deletes every finished
transaction past the retention in full batches and counts them; `txn retention` does the same
from a terminal, with a dry run that only counts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from coordinator.cli import main
from coordinator.pglog import PgLog
from coordinator.service import Coordinator
from tests.helpers import fetch
from tests.unit.test_api_auth import settings
from tests.unit.test_submit_fastpath import YesTransport
from txn_bench import growth


async def remaining(dsn: str) -> int:
    return int((await fetch(dsn, "SELECT count(*) AS n FROM transactions"))[0]["n"])


async def test_a_round_deletes_what_is_past_the_retention_in_batches(log_dsn: str) -> None:
    await growth.fill(log_dsn, 50)  # finished; the i-th last written i seconds ago
    store = PgLog.connect(log_dsn, pool_size=2)
    coordinator = Coordinator(
        settings(retention=timedelta(seconds=10.5), retention_batch=15), store, YesTransport()
    )
    try:
        assert await coordinator.retention_round() == 40  # 15 + 15 + 10
        assert coordinator.metrics.retention_deleted._value.get() == 40
        assert await remaining(log_dsn) == 10
        assert await coordinator.retention_round() == 0
    finally:
        await store.close()


async def test_txn_retention_counts_then_deletes(
    log_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await growth.fill(log_dsn, 30)
    args = ["retention", "--dsn", log_dsn, "--older-than", "20.5", "--batch", "4"]
    assert await asyncio.to_thread(main, [*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would delete 10 finished transactions")
    assert await remaining(log_dsn) == 30
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 10 finished transactions") and "password" not in out
    assert await remaining(log_dsn) == 20
    assert (
        await asyncio.to_thread(main, ["retention", "--dsn", log_dsn, "--older-than", "soon"]) == 2
    )
    assert "ISO 8601" in capsys.readouterr().err
