"""``max_recovering`` bounds the drives recovery starts, and only those: an instance busy with
fresh submissions still takes over another instance's expired transactions (in memory: MemLog
and a transport whose calls hang, so every drive stays in flight)."""

from __future__ import annotations

import asyncio
from typing import Any

from coordinator.memlog import MemLog
from coordinator.records import BranchSpec, NewTxn
from coordinator.service import Coordinator
from coordinator.settings import Settings
from coordinator.transport import Reply
from tests.helpers import token_entries


class Hanging:
    async def call(self, *_args: Any) -> Reply:
        await asyncio.Event().wait()  # never answers: the drive stays in flight
        raise AssertionError("unreachable")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


def txn(gid: str) -> NewTxn:
    return NewTxn(gid, "saga", {"mode": "saga"}, f"h:{gid}", (BranchSpec("a", "/x", "/u", {}),), 30)


async def test_fresh_drives_do_not_use_up_the_recovery_bound() -> None:
    store = MemLog()
    for i in range(5):  # another instance's, their leases about to lapse
        await store.insert(txn(f"orphan-{i}"), "dead", 0.01)
    settings = Settings(
        participants={"a": "http://127.0.0.1:9"},
        participant_secrets={"a": "sa"},
        api_tokens=token_entries(),
        recovery=False,
        instance_id="busy",
        max_recovering=2,
        claim_batch=10,
    )
    c = Coordinator(settings, store, Hanging())
    try:
        for i in range(3):  # fresh submissions in flight: more than max_recovering
            await c.submit(txn(f"fresh-{i}"))
        await asyncio.sleep(0.05)
        store.advance(1.0)
        assert c.in_flight() == 3
        assert await c.recover_once(own=False) == 2  # bounded by max_recovering, not zero
        assert await c.recover_once(own=False) == 0  # the two recovered drives fill it
        assert c.in_flight() == 5
    finally:
        await c.stop()
