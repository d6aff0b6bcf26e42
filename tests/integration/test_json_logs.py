"""Logs as JSON: a stack whose coordinator runs as `txn serve` and whose ledgers log with
TXNP_LOG_FORMAT=json, at DEBUG. Every line each process wrote parses as one JSON object with
its time, level, logger and message, and the lines about a transaction carry its gid (and the
branch, on the participant's side)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import (
    TEST_API_TOKEN,
    api_client,
    open_accounts,
    participant_urls,
    saga_branch,
    unique,
)
from txn_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def json_stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "json-logs",
            ledgers=2,
            fsync=False,
            coordinator_env={
                **TEST_COORDINATOR_ENV,
                "TXN_LOG_FORMAT": "json",
                "TXN_LOG_LEVEL": "DEBUG",
            },
            participant_env={"TXNP_LOG_FORMAT": "json", "TXNP_LOG_LEVEL": "DEBUG"},
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def lines_of(stack: Stack, service: str) -> list[dict[str, Any]]:
    path = stack.state_dir / "logs" / f"{service}.log"
    out = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise AssertionError(f"{path}:{n} is not JSON: {raw[:200]!r}") from e
        assert isinstance(line, dict) and {"ts", "level", "logger", "msg"} <= set(line), raw
        out.append(line)
    return out


async def test_every_line_is_json_and_transactions_carry_their_gid(json_stack: Stack) -> None:
    url = json_stack.coordinator_url
    account = unique("json")
    gid_ok, gid_undone = unique("json-ok"), unique("json-undone")
    async with api_client(timeout=30) as client:
        await open_accounts(client, participant_urls(json_stack), account, 10)
        ok = {
            "gid": gid_ok,
            "mode": "2pc",
            "branches": [
                {
                    "participant": n,
                    "action": "/accounts/adjust",
                    "payload": {"account": account, "delta": d},
                }
                for n, d in (("ledger1", -1), ("ledger2", 1))
            ],
        }
        undone = {
            "gid": gid_undone,
            "mode": "saga",
            "branches": [saga_branch("ledger1", account, 5), saga_branch("ledger2", account, -99)],
        }
        for body in (ok, undone):
            reply = await client.post(f"{url}/v1/transactions?wait=20", json=body)
            assert reply.json()["status"] in ("committed", "aborted"), reply.text
    coordinator = lines_of(json_stack, "coord1")
    assert coordinator
    about = [line for line in coordinator if line.get("gid") == gid_ok]
    assert {line["msg"] for line in about} >= {"decided committing", "finished committed"}
    assert all(line["level"] == "debug" and "epoch" in line for line in about)
    ledger1 = lines_of(json_stack, "ledger1")
    undo = [line for line in ledger1 if line.get("gid") == gid_undone]
    assert undo and all(line.get("branch") == 0 for line in undo), ledger1[-5:]
    assert lines_of(json_stack, "ledger2")
