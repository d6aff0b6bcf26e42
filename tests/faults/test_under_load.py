"""Faults under a steady load of 2PC and saga transactions (tests/faults/load.py): the log's
Postgres crashes, the coordinator's log connections are terminated, the coordinator is
SIGKILLed with 32 transactions in flight. Expected each time: every transaction the API
accepted reaches a terminal status within the stated bound, each ledger's balances equal the
openings plus exactly the committed deltas, and nothing stays prepared or live."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.faults.load import TransferLoad
from tests.helpers import api_client, fetch
from txn_devstack.faults import terminate_log_backends
from txn_devstack.stack import Stack

SETTLE_BOUND_S = 60.0


async def _live(stack: Stack) -> int:
    rows = await fetch(
        stack.log_dsn,
        "SELECT count(*) AS n FROM transactions WHERE status NOT IN ('committed', 'aborted')",
    )
    return int(rows[0]["n"])


async def test_log_database_crash_under_load(fault_stack: Stack) -> None:
    """The log's cluster crashes (immediate shutdown) for 2 s while 12 clients submit. During
    the outage submissions get 503 ("retry with the same gid"), which the clients do; whatever
    the log holds finishes (recovery picks up what the drivers dropped), and a 503 that came
    after the insert had committed does not duplicate the transaction."""
    load = TransferLoad(fault_stack, clients=12)
    log_cluster = fault_stack.clusters["log"]
    async with api_client(timeout=30) as client:
        await load.open(client)
        driving = asyncio.create_task(load.drive(client))
        await asyncio.sleep(2.0)
        before = len(load.sent)
        await asyncio.to_thread(log_cluster.crash)
        try:
            await asyncio.sleep(2.0)
        finally:
            await asyncio.to_thread(log_cluster.start)
        await asyncio.sleep(3.0)
        load.stop()
        await driving
        took = await load.settle(client, SETTLE_BOUND_S)
        counts = await load.verify()
    retried = [s for s in load.sent if s.retried_after_503]
    print(f"log crash under load: {counts}; {len(retried)} retried after a 503; {took:.1f}s")
    assert before > 0 and retried, "the crash must land while transactions flow"
    assert counts.get("2pc committed", 0) > 0 and counts.get("saga committed", 0) > 0


async def test_log_connections_terminated_under_load(fault_stack: Stack) -> None:
    """pg_terminate_backend on every coordinator log connection, three times, while 12 clients
    submit: the pool reconnects and every accepted transaction finishes."""
    load = TransferLoad(fault_stack, clients=12)
    killed = []
    async with api_client(timeout=30) as client:
        await load.open(client)
        driving = asyncio.create_task(load.drive(client))
        for _ in range(3):
            await asyncio.sleep(1.0)
            killed.append(await asyncio.to_thread(terminate_log_backends, fault_stack.log_dsn))
        await asyncio.sleep(2.0)
        load.stop()
        await driving
        took = await load.settle(client, SETTLE_BOUND_S)
        counts = await load.verify()
    print(f"terminated {killed} log connections under load: {counts}, settled in {took:.1f}s")
    assert all(n > 0 for n in killed), "the coordinator's log connections must have been hit"
    assert counts.get("2pc committed", 0) > 0 and counts.get("saga committed", 0) > 0


async def test_coordinator_sigkilled_with_32_transactions_in_flight(fault_stack: Stack) -> None:
    """32 clients; once at least 32 transactions are live in the log, the coordinator is
    SIGKILLed; the supervisor restarts it, and the restarted instance takes back its own work at
    once (no lease to wait out). Bound: 60 s for everything to be terminal."""
    load = TransferLoad(fault_stack, clients=32, wait_s=5.0)
    coord = fault_stack.coordinators[0]
    async with api_client(timeout=30) as client:
        await load.open(client)
        driving = asyncio.create_task(load.drive(client))
        live = 0
        for _ in range(300):  # bounded: 32 closed-loop clients give 32 live transactions soon
            live = await _live(fault_stack)
            if live >= 32:
                break
            await asyncio.sleep(0.02)
        assert coord.pid is not None
        restarts = coord.restarts
        os.kill(coord.pid, signal.SIGKILL)
        await asyncio.to_thread(fault_stack.wait_restarted, coord.name, restarts + 1)
        await asyncio.sleep(2.0)
        load.stop()
        await driving
        took = await load.settle(client, SETTLE_BOUND_S)
        counts = await load.verify()
    print(f"SIGKILL with {live} live: {counts}, settled in {took:.1f}s after the load stopped")
    assert live >= 32, f"only {live} transactions were live when the coordinator was killed"
    assert counts.get("2pc committed", 0) > 0 and counts.get("saga committed", 0) > 0
