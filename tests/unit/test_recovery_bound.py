"""``max_recovering`` bounds the drives recovery starts, and only those: an instance busy with
fresh submissions still takes over another instance's expired transactions; and an instance id
is one process's: a start under an id whose leases another live process renews is refused (in
memory: MemLog and a transport whose calls hang, so every drive stays in flight)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.memlog import MemLog
from coordinator.records import BranchSpec, NewTxn
from coordinator.service import Coordinator, InstanceIdInUse
from coordinator.settings import Settings
from coordinator.transport import Kind, Reply
from tests.helpers import token_entries


class Hanging:
    async def call(self, *_args: Any) -> Reply:
        await asyncio.Event().wait()  # never answers: the drive stays in flight
        raise AssertionError("unreachable")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


def settings(instance_id: str, **over: Any) -> Settings:
    return Settings(
        participants={"a": "http://127.0.0.1:9"},
        participant_secrets={"a": "sa"},
        api_tokens=token_entries(),
        recovery=False,
        instance_id=instance_id,
        **over,
    )


def txn(gid: str) -> NewTxn:
    return NewTxn(gid, "saga", {"mode": "saga"}, f"h:{gid}", (BranchSpec("a", "/x", "/u", {}),), 30)


async def test_fresh_drives_do_not_use_up_the_recovery_bound() -> None:
    store = MemLog()
    for i in range(5):  # another instance's, their leases about to lapse
        await store.insert(txn(f"orphan-{i}"), "dead", 0.01)
    c = Coordinator(settings("busy", max_recovering=2, claim_batch=10), store, Hanging())
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


def twin_settings() -> Settings:
    return settings("twin", lease_s=2.0, renew_interval_s=0.1)


async def test_a_start_under_an_id_a_live_process_uses_is_refused() -> None:
    store = MemLog()
    first = Coordinator(twin_settings(), store, Hanging())
    await first.start()
    try:
        await first.submit(txn("held"))  # a lease the first instance keeps renewing
        await asyncio.sleep(0.3)
        second = Coordinator(twin_settings(), store, Hanging())
        with pytest.raises(InstanceIdInUse, match="TXN_INSTANCE_ID 'twin' is in use"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_a_restart_after_a_crash_takes_its_id_back() -> None:
    """The predecessor died (its leases stand still): the restart under its id goes ahead."""
    store = MemLog()
    first = Coordinator(twin_settings(), store, Hanging())
    await first.start()
    await first.submit(txn("held"))
    await asyncio.sleep(0.2)
    await first.stop()  # as dead: no renewal from here on, its lease still running
    horizon = await store.lease_horizon("twin")
    assert horizon is not None and horizon > store.now()
    restarted = Coordinator(twin_settings(), store, Hanging())
    await restarted.start()  # no refusal
    await restarted.stop()


class NoRenewals(MemLog):
    """A log that cannot be reached for renewals (as from a frozen or cut-off process)."""

    async def renew(self, *_args: Any) -> set[str]:
        raise ConnectionRefusedError("the log is unreachable")


class SlowThenYes:
    """The first call takes longer than the lease and fails; any later one would succeed."""

    def __init__(self, first_s: float) -> None:
        self.first_s = first_s
        self.calls: list[str] = []

    async def call(self, *args: Any) -> Reply:
        self.calls.append(str(args[2]))
        if len(self.calls) == 1:
            await asyncio.sleep(self.first_s)
            return Reply(Kind.TRANSIENT, 503, "slow")
        return Reply(Kind.OK, 200, "")

    async def catalogue(self, _participant: str) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


async def test_no_call_is_sent_once_the_lease_lapsed_unrenewed() -> None:
    """A drive whose lease ran out (no renewal: a frozen process, a log it cannot reach) sends
    no more calls: another instance may own the transaction, and a call signed now could reach
    a participant after its barrier rows were purged."""
    store = NoRenewals()
    transport = SlowThenYes(first_s=0.6)
    c = Coordinator(
        settings("lapsing", lease_s=0.5, renew_interval_s=0.2, retry_initial_s=0.01),
        store,
        transport,
    )
    try:
        await c.submit(txn("slow"))
        await asyncio.sleep(1.5)  # the first call failed after the lease lapsed; retries due
        assert transport.calls == ["action"], transport.calls  # none of them was sent
        assert not c._lease_held("slow")
    finally:
        await c.stop()
