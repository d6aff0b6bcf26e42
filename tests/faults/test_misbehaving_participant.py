"""Malformed participant answers (non-JSON errors, a redirect elsewhere, odd status codes, a
huge body, a slow trickle) are transient failures or refusals, never a coordinator crash: each
transaction aborts cleanly and the coordinator keeps serving."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import TEST_API_TOKEN, api_client, fetch, prepared_xacts, unique
from txn_devstack.postgres import free_port
from txn_devstack.stack import Stack, StackConfig

SERVER = Path(__file__).with_name("misbehaving_participant.py")


WEIRD_SECRET = "weird-participant-secret"


@pytest.fixture(scope="module")
def weird_stack(state_root: Path) -> Iterator[Stack]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), WEIRD_SECRET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the misbehaving participant did not start"
                time.sleep(0.1)
        stack = Stack(
            StackConfig(
                api_token=TEST_API_TOKEN,
                state_dir=state_root / "weird",
                ledgers=1,
                cluster_per_participant=False,
                fsync=False,
                coordinator_env={**TEST_COORDINATOR_ENV, "TXN_CALL_TIMEOUT_S": "1"},
                extra_registry={"weird": f"http://127.0.0.1:{port}"},
                extra_secrets={"weird": WEIRD_SECRET},
            )
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize(
    ("path", "expected_reason"),
    [
        ("/non-json-500", "HTTP 500"),
        ("/redirect", "HTTP 302"),
        ("/teapot", "HTTP 418"),
        ("/huge-409", "xxxx"),
        ("/trickle", "no reply within"),
        ("/yes-not-prepared", "without naming the prepared transaction: not a yes vote"),
    ],
)
async def test_malformed_answers_abort_cleanly(
    weird_stack: Stack, path: str, expected_reason: str
) -> None:
    coord = weird_stack.coordinators[0]
    pid = coord.pid
    ledger = weird_stack.service("ledger1")
    account = unique("weird")
    async with api_client(timeout=30) as client:
        await client.post(f"{ledger.url}/accounts", json={"id": account, "balance": 10})
        body = {
            "mode": "2pc",
            "timeout_s": 5,
            "branches": [
                {
                    "participant": "ledger1",
                    "action": "/accounts/adjust",
                    "payload": {"account": account, "delta": 1},
                },
                {"participant": "weird", "action": path},
            ],
        }
        reply = await client.post(f"{coord.url}/v1/transactions?wait=20", json=body)
        assert reply.status_code == 201, reply.text
        txn = reply.json()
        assert txn["status"] == "aborted", txn
        assert "weird: " in txn["reason"] and expected_reason in txn["reason"], txn
        assert len(txn["reason"]) < 70_000  # a huge answer is read only in part
        assert (await client.get(f"{coord.url}/readyz")).status_code == 200
    assert coord.pid == pid and coord.restarts == 0, "the coordinator must not crash"
    assert ledger.dsn is not None
    rows = await fetch(ledger.dsn, "SELECT balance FROM accounts WHERE id = $1", account)
    assert rows[0]["balance"] == 10
    assert await prepared_xacts(ledger.dsn) == []
