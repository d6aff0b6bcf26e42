"""The coordinator instance: submits and drives transactions, recovers due work, renews leases.

Every transaction this instance drives is in ``active`` (gid -> epoch); one statement per
interval renews all their leases. Recovery claims due work in batches with one statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from coordinator.declared import Declared
from coordinator.drivebase import Deps
from coordinator.driver import TwoPCDriver
from coordinator.errors import LOG_ERRORS, OwnershipLost, briefly
from coordinator.intervention import Act, Refusal, lease_refusal, plan
from coordinator.logstore import LogStore
from coordinator.metrics import Metrics
from coordinator.records import Claim, Inserted, NewTxn, TxnRecord
from coordinator.retention import purge_in_batches
from coordinator.schema import TERMINAL
from coordinator.settings import Settings
from coordinator.transport import HttpTransport, Transport
from participants.sdk import tracing
from participants.sdk.crash import COORDINATOR_POINTS, CrashPoints
from sagas.driver import SagaDriver

log = logging.getLogger(__name__)


class InstanceIdInUse(RuntimeError):
    """Another live process runs under this instance id."""


class Coordinator:
    def __init__(self, settings: Settings, store: LogStore, transport: Transport) -> None:
        self.settings = settings
        self.store = store
        self.transport = transport
        self.crash = CrashPoints(settings.crash_at, settings.crash_marker, COORDINATOR_POINTS)
        self.metrics = Metrics()
        self.metrics.driving_now(lambda: len(self._tasks))
        if isinstance(transport, HttpTransport):
            transport.client.on_stale_retry = self.metrics.stale_resent.inc
        self.declared = Declared(transport, list(settings.participants))
        self.tracing = tracing.start(settings.tracing, "txn-coordinator", "TXN_TRACING")
        # Per gid driven here: until when (this process's monotonic clock) its lease surely
        # holds: set at the claim, moved on by each renewal, a tenth short of the lease.
        self.lease_expiry: dict[str, float] = {}
        deps = Deps(
            store,
            transport,
            settings,
            self.crash,
            self.notify,
            self.metrics,
            self.tracing,
            self._lease_held,
        )
        self.driver = TwoPCDriver(deps)
        self.saga_driver = SagaDriver(deps)
        self.active: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        # The drives recovery started (max_recovering bounds these only: fresh submissions
        # under steady load must not starve the takeover of another instance's work).
        self._recovering: set[str] = set()
        # Per gid, the waiters' futures: a finished drive hands them the record as logged
        # (rule 3 holds: it is what the log now says); anything else wakes them to read it.
        self._waiters: dict[str, list[asyncio.Future[TxnRecord | None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        # The log's time when this incarnation started: what its own-claim may take back.
        self.started_at: datetime | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # Read before the API serves (the lifespan awaits this), so every row this incarnation
        # writes is later. Without it the own-claim is skipped: leases run out, slower, safe.
        try:
            async with asyncio.timeout(self.settings.lease_s):
                self.started_at = await self.store.clock()
        except Exception:
            log.warning("log unreachable at start: own work is recovered as its leases run out")
        else:
            try:
                await self._refuse_a_live_twin()
            except LOG_ERRORS as e:
                log.warning("could not check this instance id's leases (%s)", briefly(e))
        self._loops.append(asyncio.create_task(self._renew_loop(), name="lease-renewal"))
        self._loops.append(asyncio.create_task(self.declared.warm(), name="catalogues"))
        self._loops.append(asyncio.create_task(self._sample_loop(), name="metrics-sampler"))
        if self.settings.recovery:
            self._loops.append(asyncio.create_task(self._recovery_loop(), name="recovery"))
        if self.settings.retention.total_seconds() > 0:
            self._loops.append(asyncio.create_task(self._retention_loop(), name="retention"))

    async def _refuse_a_live_twin(self) -> None:
        """Refuse to start under an instance id another live process uses: if leases of this
        id are still running, watch them for a renewal interval and a half; a dead
        predecessor's stand still (its own-claim takes them back), a live twin's move on."""
        me, s = self.settings.instance_id, self.settings
        before = await self.store.lease_horizon(me)
        if before is None or self.started_at is None or before <= self.started_at:
            return
        await asyncio.sleep(1.5 * s.renew_interval_s)
        after = await self.store.lease_horizon(me)
        if after is not None and after > before:
            raise InstanceIdInUse(
                f"TXN_INSTANCE_ID {me!r} is in use: another live coordinator renews its leases. "
                "Give every replica its own id (compose and Kubernetes set it per replica)."
            )

    async def stop(self) -> None:
        for task in [*self._loops, *self._tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks.values(), return_exceptions=True)
        self._loops.clear()
        await self.declared.close()
        await self.transport.close()
        await self.store.close()
        if self.tracing is not None:
            self.tracing.shutdown()

    def in_flight(self) -> int:
        """Transactions this instance drives now (fresh and recovered)."""
        return len(self._tasks)

    # -- submission and driving ----------------------------------------------------------

    async def submit(self, new: NewTxn) -> tuple[Inserted, TxnRecord]:
        with self.metrics.log_write("insert"):
            outcome, claim = await self.store.insert(
                new, self.settings.instance_id, self.settings.lease_s
            )
        if outcome is Inserted.CREATED:
            self.metrics.submitted.labels(new.mode).inc()
            self.crash.hit("after_log_insert")
            self._drive(claim, fresh=True)
        return outcome, claim.record

    def _lease_held(self, gid: str) -> bool:
        return time.monotonic() < self.lease_expiry.get(gid, 0.0)

    def _drive(self, claim: Claim, fresh: bool) -> None:
        gid = claim.record.gid
        # The claim's statement began before now: the lease runs out no earlier than this.
        self.lease_expiry[gid] = time.monotonic() + 0.9 * self.settings.lease_s
        previous = self._tasks.get(gid)
        if previous is not None:
            previous.cancel()  # fenced out by the new epoch anyway; stop it wasting calls
        self.active[gid] = claim.record.epoch
        task = asyncio.create_task(self._drive_one(claim, fresh), name=f"drive:{gid}")
        self._tasks[gid] = task

    async def _drive_one(self, claim: Claim, fresh: bool) -> None:
        gid, epoch = claim.record.gid, claim.record.epoch
        try:
            if self.tracing is None:
                await self._run_driver(claim, fresh)
            else:
                # Under the submission's span, kept with the transaction in the log: a drive
                # resumed by recovery, here or on another instance, joins the same trace.
                attributes = {
                    "txn.gid": gid,
                    "txn.mode": claim.record.mode,
                    "txn.epoch": epoch,
                    "txn.recovered": not fresh,
                }
                parent = claim.record.request.get(tracing.TRACEPARENT)
                with self.tracing.internal(f"drive {claim.record.mode}", attributes, parent):
                    await self._run_driver(claim, fresh)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The log or a participant misbehaved in a way the driver could not absorb; the
            # lease lapses and recovery picks the transaction up again.
            log.exception("driver failed; recovery will resume it", extra={"gid": gid})
        finally:
            if self.active.get(gid) == epoch:
                del self.active[gid]
            if self._tasks.get(gid) is asyncio.current_task():
                del self._tasks[gid]
                self._recovering.discard(gid)
                self.lease_expiry.pop(gid, None)
            self.notify(gid)  # after a finish this finds no waiter left

    async def _run_driver(self, claim: Claim, fresh: bool) -> None:
        if claim.record.mode == "saga":
            await self.saga_driver.drive(claim, fresh)
        else:
            await self.driver.drive(claim, fresh)

    async def resolve_doubt(self, record: TxnRecord) -> TxnRecord:
        """Someone asks about ``record``. If it is a 2PC transaction still preparing whose
        owner's lease ran out, decide abort first (a fenced write), drive the rollbacks, and
        answer with that: the question itself ends the doubt."""
        if record.mode != "2pc" or record.status != "preparing":
            return record
        claim = await self.store.abort_orphan(
            record.gid,
            self.settings.instance_id,
            self.settings.lease_s,
            "presumed abort: asked while preparing, after its coordinator's lease ran out",
        )
        if claim is None:
            return record
        log.warning("in doubt and orphaned: decided abort", extra={"gid": record.gid})
        self._drive(claim, fresh=False)
        return claim.record

    async def intervene(
        self, gid: str, act: Act, by: str, note: str, branch: int | None = None
    ) -> TxnRecord:
        """An operator's action (coordinator/intervention.py), written fenced on what it was
        planned from; this instance then drives the transaction. Raises Refusal."""
        for _ in range(3):
            record = await self.store.get(gid)
            if record is None:
                raise Refusal(404, f"no transaction with gid {gid}")
            write = plan(record, act, by, note, branch)
            claim = await self.store.intervene(
                gid, write, self.settings.instance_id, self.settings.lease_s
            )
            if claim is not None:
                log.warning("operator %s: %s (%s)", by, act, note, extra={"gid": gid})
                self.metrics.interventions.labels(str(act)).inc()
                self._drive(claim, fresh=False)
                return claim.record
            now = await self.store.get(gid)
            unchanged = now is not None and (now.epoch, now.status) == (record.epoch, record.status)
            if unchanged and write.branch is not None and now is not None:
                unchanged = now.branches[write.branch].status == write.branch_status
            if unchanged and write.unleased:
                raise lease_refusal(record, act)
            # A driver wrote in between: plan again from what the log holds now.
        raise Refusal(409, f"transaction {gid} kept changing; try again")

    # -- waiting for outcomes ------------------------------------------------------------

    def notify(self, gid: str, logged: TxnRecord | None = None) -> None:
        """Wake whoever waits on ``gid``; ``logged``: the record exactly as the log holds it
        after a terminal write, which spares them reading it back."""
        for waiter in self._waiters.pop(gid, []):
            if not waiter.done():
                waiter.set_result(logged)

    async def wait(
        self, gid: str, timeout_s: float, known: TxnRecord | None = None
    ) -> TxnRecord | None:
        """Wait until the logged status is terminal or ``timeout_s`` passes; returns what is
        logged (rule 3: only a logged outcome is ever reported). ``known``: the record as just
        logged (a fresh submission), which spares the first read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        record = known
        while True:
            waiter: asyncio.Future[TxnRecord | None] = loop.create_future()
            self._waiters.setdefault(gid, []).append(waiter)
            if record is None:
                # Rule 3: the answer is what the log holds, never the driver's memory.
                record = await self.store.get(gid)
            remaining = deadline - loop.time()
            if record is None or record.status in TERMINAL or remaining <= 0:
                self._discard_waiter(gid, waiter)
                return record
            # A drive here ends with a notify (finished, rescheduled, fenced or failed); a
            # transaction driven elsewhere (another instance) is looked at every half second.
            patience = remaining if gid in self._tasks else min(remaining, 0.5)
            record = None
            try:
                async with asyncio.timeout(patience):
                    record = await waiter
            except TimeoutError:
                # The timeout cancelled the waiter; notify() skips a waiter that is done.
                self._discard_waiter(gid, waiter)

    def _discard_waiter(self, gid: str, waiter: asyncio.Future[TxnRecord | None]) -> None:
        waiters = self._waiters.get(gid)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[gid]

    # -- recovery and leases -------------------------------------------------------------

    async def recover_once(self, own: bool) -> int:
        # Bounded: a backlog is taken in batches as drivers finish, not all at once.
        room = self.settings.max_recovering - len(self._recovering)
        limit = min(self.settings.claim_batch, room)
        if limit <= 0:
            return 0
        with self.metrics.log_write("claim"):
            claims = await self.store.claim(
                self.settings.instance_id,
                limit,
                self.settings.lease_s,
                own_before=self.started_at if own else None,
            )
        if claims:
            self.metrics.claim_batches.inc()
        for claim in claims:
            self.metrics.recovered.inc()
            log.info(
                "recovering from %s",
                claim.record.status,
                extra={"gid": claim.record.gid, "epoch": claim.record.epoch},
            )
            self._recovering.add(claim.record.gid)
            self._drive(claim, fresh=False)
        return len(claims)

    async def _recovery_loop(self) -> None:
        own = True  # first: take back at once what this instance id held before a restart
        while True:
            try:
                claimed = await self.recover_once(own)
                own = own and claimed >= self.settings.claim_batch  # all of our own, first
                if claimed >= self.settings.claim_batch:
                    continue  # a backlog: keep claiming without waiting
            except asyncio.CancelledError:
                raise
            except LOG_ERRORS as e:
                log.warning("log unavailable (%s); recovery tries again", briefly(e))
            except Exception:
                log.exception("recovery claim failed; retrying")
            await asyncio.sleep(self.settings.claim_interval_s)

    async def sample_log(self) -> None:
        """Read the log-wide gauges once (metrics): a scrape only reads what this left."""
        self.metrics.sampled(await self.store.live_summary(self.settings.stuck_attempts))

    async def _sample_loop(self) -> None:
        while True:
            try:
                await self.sample_log()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # The gauges keep their last values; their timestamp shows they are stale.
                log.warning("metrics: the log could not be sampled (%s)", type(e).__name__)
            await asyncio.sleep(self.settings.metrics_interval_s)

    async def retention_round(self, max_batches: int = 20, pause: bool = True) -> int:
        """Delete finished transactions past the retention, batch after batch while batches
        come back full (bounded: the next round takes the rest), paced
        (``coordinator.retention``). Returns how many."""
        s, m = self.settings, self.metrics

        def counted(n: int, seconds: float) -> None:
            m.log_write_seconds.labels("purge").observe(seconds)
            m.retention_deleted.inc(n)

        deleted = await purge_in_batches(
            self.store,
            s.retention.total_seconds(),
            s.retention_batch,
            max_batches,
            pause,
            counted,
        )
        if deleted:
            log.info("retention: deleted %d finished transactions", deleted)
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                await self.retention_round()
            except asyncio.CancelledError:
                raise
            except LOG_ERRORS as e:
                log.warning("log unavailable (%s); retention tries again later", briefly(e))
            except Exception:
                log.exception("retention round failed; trying again later")

    async def _renew_loop(self) -> None:
        interval = self.settings.renew_interval_s
        while True:
            await asyncio.sleep(interval)
            held = dict(self.active)
            if not held:
                continue
            started = time.monotonic()
            try:
                with self.metrics.log_write("renew"):
                    renewed = await self.store.renew(
                        self.settings.instance_id, held, self.settings.lease_s
                    )
            except asyncio.CancelledError:
                raise
            except LOG_ERRORS as e:
                log.warning("log unavailable (%s); lease renewal tries again", briefly(e))
                continue
            except Exception:
                log.exception("lease renewal failed")
                continue
            for gid in renewed:
                if self.active.get(gid) == held[gid]:
                    self.lease_expiry[gid] = started + 0.9 * self.settings.lease_s
            for gid in set(held) - renewed:
                # Taken over (or finished meanwhile): a running driver will be fenced out.
                task = self._tasks.get(gid)
                if task is not None and self.active.get(gid) == held[gid]:
                    self.metrics.leases_lost.inc()
                    log.warning("lease lost", extra={"gid": gid, "epoch": held[gid]})
                    task.cancel()


__all__ = ["Coordinator", "OwnershipLost"]
