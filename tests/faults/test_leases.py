"""Leases: a restarted instance with the same stable instance id takes back its own work at
once instead of waiting out its (here deliberately long) lease."""

from __future__ import annotations

import os
import signal
import time

from tests.helpers import (
    api_client,
    balances,
    catalogues_read,
    fetch,
    open_accounts,
    prepared_xacts,
    unique,
    wait_terminal,
)
from txn_devstack.stack import Stack

LONG_LEASE = 30.0


async def test_restarted_instance_reclaims_its_own_work_at_once(fault_stack: Stack) -> None:
    coord = fault_stack.coordinators[0]
    ledger3 = fault_stack.service("ledger3")
    fault_stack.restart(coord.name, env={"TXN_LEASE_S": str(LONG_LEASE)})
    account, gid = unique("lease"), unique("lease")
    urls = {p.name: p.url for p in fault_stack.participants}
    dsns = {p.name: p.dsn for p in fault_stack.participants if p.dsn}
    try:
        async with api_client(timeout=10) as client:
            await open_accounts(client, urls, account, 50)
            await catalogues_read(client, coord.url)
            ledger3.signal(signal.SIGSTOP)  # the transaction stays in flight, leased for 30 s
            try:
                body = {
                    "gid": gid,
                    "mode": "2pc",
                    "branches": [
                        {
                            "participant": name,
                            "action": "/accounts/adjust",
                            "payload": {"account": account, "delta": 1},
                        }
                        for name in urls
                    ],
                }
                reply = await client.post(f"{coord.url}/v1/transactions", json=body)
                assert reply.status_code == 201
                rows = await fetch(
                    fault_stack.log_dsn,
                    "SELECT owner, lease_until - now() AS left FROM transactions WHERE gid = $1",
                    gid,
                )
                assert rows[0]["owner"] == coord.name
                assert rows[0]["left"].total_seconds() > LONG_LEASE - 5
                restarts = coord.restarts
                assert coord.pid is not None
                os.kill(coord.pid, signal.SIGKILL)
                killed = time.monotonic()
                fault_stack.wait_restarted(coord.name, restarts + 1)
            finally:
                ledger3.signal(signal.SIGCONT)
            txn = await wait_terminal(client, coord.url, gid, timeout_s=LONG_LEASE / 2)
            took = time.monotonic() - killed
        # Presumed abort: the restarted instance found it preparing and rolled it back, long
        # before the 30 s lease it held would have let anyone else take it.
        assert txn["status"] == "aborted"
        assert took < LONG_LEASE / 2, took
        claims = [e["detail"] for e in txn["events"] if e["kind"] == "claimed"]
        assert claims and claims[0]["owner"] == coord.name and claims[0]["epoch"] == 2
        assert await balances(dsns, account) == dict.fromkeys(urls, 50)
        for dsn in dsns.values():
            assert await prepared_xacts(dsn) == []
    finally:
        fault_stack.restart(coord.name, env={"TXN_LEASE_S": "2"})
