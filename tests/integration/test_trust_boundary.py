"""The trust boundary on the session stack (real processes, real HTTP): the coordinator calls
only the branch operations participants declare in their signed catalogues, and a body streamed
without a length is refused while it is read, at little memory cost, by the coordinator and by a
participant alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import api_client, unique
from txn_devstack.stack import Stack

MIB = 1024 * 1024


def peak_rss_mib(pid: int | None) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    assert pid is not None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("mode", "branch", "refusal"),
    [
        # The mint: any POST path of a registered participant, as a saga step.
        (
            "saga",
            {
                "action": "/accounts",
                "compensation": "/accounts/adjust/undo",
                "payload": {"id": "mint", "balance": 10**18},
            },
            "ledger1: /accounts is not a saga action (not declared)",
        ),
        (
            "2pc",
            {"action": "/accounts", "payload": {"id": "mint", "balance": 10**18}},
            "ledger1: /accounts is not a 2PC branch operation (not declared)",
        ),
        (
            "2pc",
            {"action": "/accounts/adjust/undo", "payload": {"account": "x", "delta": 1}},
            "ledger1: /accounts/adjust/undo is not a 2PC branch operation",
        ),
        (
            "saga",
            {
                "action": "/accounts/adjust",
                "compensation": "/accounts",
                "payload": {"account": "x", "delta": 1},
            },
            "the compensation of /accounts/adjust is /accounts/adjust/undo, not /accounts",
        ),
    ],
)
async def test_undeclared_operations_are_refused_and_nothing_is_logged(
    stack: Stack, mode: str, branch: dict[str, Any], refusal: str
) -> None:
    gid = unique("undeclared")
    ok = {"participant": "ledger2", "action": "/accounts/adjust", "payload": {"account": "y"}}
    if mode == "saga":
        ok["compensation"] = "/accounts/adjust/undo"
    body = {"gid": gid, "mode": mode, "branches": [ok, {"participant": "ledger1", **branch}]}
    async with api_client(base_url=stack.coordinator_url, timeout=30) as client:
        reply = await client.post("/v1/transactions", json=body)
        assert reply.status_code == 422, reply.text
        [error] = reply.json()["errors"]
        assert error["field"] == "body.branches.1" and refusal in error["message"], error
        assert (await client.get(f"/v1/transactions/{gid}")).status_code == 404


async def ten_mib() -> AsyncIterator[bytes]:
    for _ in range(10 * 16):
        yield b"[" * 65536


@pytest.mark.parametrize("target", ["coordinator", "participant"])
async def test_a_chunked_10_mib_body_is_refused_and_costs_under_20_mib(
    stack: Stack, target: str
) -> None:
    service = stack.coordinators[0] if target == "coordinator" else stack.service("ledger1")
    path = "/v1/transactions" if target == "coordinator" else "/accounts/adjust"
    before = peak_rss_mib(service.pid)
    async with api_client(base_url=service.url, timeout=30) as client:
        for _ in range(3):
            reply = await client.post(
                path, content=ten_mib(), headers={"content-type": "application/json"}
            )
            assert reply.status_code == 413, reply.text
        assert (await client.get("/healthz")).status_code == 200
    grown = peak_rss_mib(service.pid) - before
    assert grown < 20, f"{target}'s peak memory grew by {grown:.1f} MiB"
