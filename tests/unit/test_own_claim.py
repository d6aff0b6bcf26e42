"""The own-claim after a restart, at the Coordinator: it takes back what an earlier incarnation
of this instance id held, never a submission this incarnation is driving (taking that would bump
its epoch and fence out its own driver, which would then be resumed as a recovered one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from coordinator.memlog import MemLog
from coordinator.records import BranchSpec, Claim, Inserted, NewTxn
from coordinator.service import Coordinator
from coordinator.settings import Settings
from tests.unit.test_driver import Scripted

ME = "coord-me"


def txn(gid: str) -> NewTxn:
    branches = tuple(BranchSpec(f"p{i}", "/do", None, {}) for i in range(2))
    return NewTxn(gid, "2pc", {}, f"h-{gid}", branches, 30)


class RacingLog(MemLog):
    """Runs ``before_claim`` once, inside the claim call and before its statement: what lands
    there lands between the recovery loop deciding to claim and the claim itself."""

    def __init__(self) -> None:
        super().__init__()
        self.before_claim: Callable[[], Awaitable[Any]] | None = None
        self.clock_fails = False

    async def clock(self) -> datetime:
        if self.clock_fails:
            raise ConnectionError("log down")
        return await super().clock()

    async def claim(
        self, owner: str, limit: int, lease_s: float, own_before: datetime | None = None
    ) -> list[Claim]:
        hook, self.before_claim = self.before_claim, None
        if hook is not None:
            await hook()
        return await super().claim(owner, limit, lease_s, own_before)


def coordinator(store: MemLog) -> Coordinator:
    settings = Settings(
        instance_id=ME, recovery=False, lease_s=60, retry_initial_s=0.001, retry_max_s=0.002
    )
    return Coordinator(settings, store, Scripted({}))


async def kinds(store: MemLog, gid: str) -> Sequence[str]:
    return [e.kind for e in await store.events(gid)]


async def test_a_submission_landing_before_the_own_claim_is_not_taken_from_its_driver() -> None:
    store = RacingLog()
    # The previous incarnation logged this one and died while preparing.
    assert (await store.insert(txn("earlier"), ME, 60))[0] is Inserted.CREATED
    store.advance(0.001)
    c = coordinator(store)
    await c.start()
    try:
        store.advance(0.001)
        store.before_claim = lambda: c.submit(txn("fresh"))
        assert await c.recover_once(own=True) == 1
        fresh = await c.wait("fresh", 5)
        earlier = await c.wait("earlier", 5)
    finally:
        await c.stop()
    # Driven by the driver that submitted it, never claimed: committed at epoch 1.
    assert fresh is not None and (fresh.status, fresh.epoch) == ("committed", 1)
    assert "claimed" not in await kinds(store, "fresh")
    # The earlier incarnation's was taken back at once (its lease had a minute to run) and,
    # caught preparing, aborted (presumed abort).
    assert earlier is not None and (earlier.status, earlier.epoch) == ("aborted", 2)
    assert "claimed" in await kinds(store, "earlier")


async def test_without_the_log_at_start_the_own_claim_is_skipped() -> None:
    store = RacingLog()
    await store.insert(txn("earlier"), ME, 60)
    store.advance(0.001)
    store.clock_fails = True
    c = coordinator(store)
    await c.start()
    try:
        assert c.started_at is None
        # Left for its lease to run out, as any instance's orphan: slower, never unsafe.
        assert await c.recover_once(own=True) == 0
        store.advance(61)
        assert await c.recover_once(own=True) == 1
    finally:
        await c.stop()
