"""The fault tools, on a running :class:`~txn_devstack.stack.Stack`: every fault the suite claims to
survive, injected into real processes, databases and links, and always undone.

    injector = Injector(stack)
    done = injector.inject("crash_db", "inventory", hold_s=2.0)   # blocks for hold_s
    injector.heal_all()                                           # whatever is still broken

Kinds (``KINDS``):

- ``latency``, ``reset``, ``blackhole``: on the fault proxy in front of a participant service
  (target ``inventory``) or its database (target ``inventory-db``); need ``fault_proxies``;
- ``duplicate``: every HTTP request to a participant service delivered twice;
- ``kill``: SIGKILL a service (the stack's supervisor restarts it); ``pause``: SIGSTOP, then
  SIGCONT after ``hold_s``; ``restart``: a clean stop and start;
- ``crash_db``: immediate shutdown (``pg_ctl stop -m immediate``) of a participant's cluster,
  started again after ``hold_s``; ``crash_log_db``: the same for the log's cluster;
- ``terminate_log_backends``: ``pg_terminate_backend`` on every coordinator log connection;
- ``kill_log_primary``, ``log_switchover``: on a replicated log (``txn dev --log-ha``), SIGKILL
  the primary's postmaster or switch over; Patroni promotes the synchronous standby.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

import asyncpg

from coordinator.settings import LOG_APPLICATION_NAME
from txn_devstack.faultproxy import FaultProxy
from txn_devstack.stack import Stack

PROXY_KINDS = ("latency", "reset", "blackhole", "duplicate")
PROCESS_KINDS = ("kill", "pause", "restart")
DATABASE_KINDS = ("crash_db", "crash_log_db", "terminate_log_backends")
# On a replicated log (``log_ha``): SIGKILL its primary's postmaster (Patroni fails over), or
# a planned switchover; each waits until the group is whole again (the old primary a standby).
HA_KINDS = ("kill_log_primary", "log_switchover")
KINDS = PROXY_KINDS + PROCESS_KINDS + DATABASE_KINDS + HA_KINDS
DB_SUFFIX = "-db"


class FaultError(ValueError):
    """A fault that cannot be injected here: unknown kind or target, or no proxies."""


@dataclass(frozen=True)
class Injected:
    kind: str
    target: str
    hold_s: float
    detail: str = ""


async def _terminate(log_dsn: str) -> int:
    conn = await asyncpg.connect(log_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity "
            "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
            LOG_APPLICATION_NAME + "%",
        )
        return sum(1 for r in rows if r["gone"])
    finally:
        await conn.close()


def terminate_log_backends(log_dsn: str) -> int:
    """``pg_terminate_backend`` on every coordinator connection to the log; how many went."""
    return asyncio.run(_terminate(log_dsn))


class Injector:
    """Injects one fault at a time per target and undoes it; thread-safe, so several faults
    (on different targets) may run at once. ``counts`` tallies what was injected, by kind."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    # -- what can be hit -------------------------------------------------------------------

    def targets(self, kind: str) -> list[str]:
        s = self.stack
        if kind in ("latency", "reset", "blackhole"):
            return sorted(s.proxies) + sorted(n + DB_SUFFIX for n in s.db_proxies)
        if kind == "duplicate":
            return sorted(s.proxies)
        if kind in PROCESS_KINDS:
            return sorted(s.services)
        if kind == "crash_db":
            return sorted(n for n in s.clusters if n != "log")
        if kind == "crash_log_db":
            return ["log"] if "log" in s.clusters else []
        if kind == "terminate_log_backends":
            return ["log"]
        if kind in HA_KINDS:
            return ["log"] if "log" in s.ha else []
        raise FaultError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")

    def check(self, kind: str, target: str) -> None:
        choices = self.targets(kind)
        if not choices:
            raise FaultError(f"no target for {kind!r} here (proxies need fault_proxies=True)")
        if target not in choices:
            raise FaultError(f"{kind!r} cannot hit {target!r}; targets: {', '.join(choices)}")

    # -- injecting -------------------------------------------------------------------------

    def inject(self, kind: str, target: str, hold_s: float = 1.0) -> Injected | None:
        """Inject, hold for ``hold_s``, undo. None when the target is already under a fault."""
        self.check(kind, target)
        on_log = kind in DATABASE_KINDS + HA_KINDS and target == "log"
        resource = "log" if on_log else target
        with self._lock:
            if resource in self._busy:
                return None
            self._busy.add(resource)
        try:
            detail = self._run(kind, target, hold_s)
            with self._lock:
                self.counts[kind] += 1
            return Injected(kind, target, hold_s, detail)
        finally:
            with self._lock:
                self._busy.discard(resource)

    def _proxy(self, target: str) -> FaultProxy:
        if target.endswith(DB_SUFFIX):
            return self.stack.db_proxies[target.removesuffix(DB_SUFFIX)]
        return self.stack.proxies[target]

    def _run(self, kind: str, target: str, hold_s: float) -> str:
        s = self.stack
        if kind in PROXY_KINDS:
            proxy = self._proxy(target)
            if kind == "latency":
                proxy.set(latency_s=min(hold_s, 0.2), jitter_s=0.2)
            elif kind == "duplicate":
                proxy.set(duplicate=True)
            else:
                proxy.set(mode=kind)
            try:
                time.sleep(hold_s)
            finally:
                heal_proxy(proxy)
            return ""
        if kind == "kill":
            service = s.service(target)
            pid = service.pid
            if pid is None:
                return "not running"
            restarts = service.restarts
            service.signal(signal.SIGKILL)
            s.wait_restarted(target, restarts + 1, timeout_s=max(60.0, hold_s))
            return f"pid {pid}"
        if kind == "pause":
            service = s.service(target)
            service.signal(signal.SIGSTOP)
            try:
                time.sleep(hold_s)
            finally:
                service.signal(signal.SIGCONT)
            return ""
        if kind == "restart":
            s.restart(target)
            return ""
        if kind in ("crash_db", "crash_log_db"):
            cluster = s.clusters[target]
            cluster.crash()
            try:
                time.sleep(hold_s)
            finally:
                cluster.start()
            return ""
        if kind == "terminate_log_backends":
            return f"{terminate_log_backends(s.log_dsn)} connections"
        if kind in HA_KINDS:
            group = s.ha[target]
            group.wait_healthy(60.0)  # a sync standby to fail over to
            if kind == "kill_log_primary":
                old = group.kill_primary().name
            else:
                old, _ = group.switchover()
            new = group.wait_leader_other_than(old)
            time.sleep(hold_s)
            group.wait_healthy(90.0)
            return f"{old} -> {new}"
        raise FaultError(f"unknown fault kind {kind!r}")

    def heal_all(self) -> None:
        """Undo anything left broken (a fault interrupted midway): proxies pass, every process
        runs, every cluster is up."""
        for proxy in [*self.stack.proxies.values(), *self.stack.db_proxies.values()]:
            heal_proxy(proxy)
        for service in self.stack.services.values():
            service.signal(signal.SIGCONT)
        for cluster in self.stack.clusters.values():
            cluster.start()
        for group in self.stack.ha.values():
            group.wait_healthy(90.0)


def heal_proxy(proxy: FaultProxy) -> None:
    """Back to passing. A black hole's open connections are cut, as a healed partition's would
    be by TCP keepalive: what was swallowed never gets an answer, so the ends must learn so."""
    was_blackhole = proxy.faults.mode == "blackhole"
    if was_blackhole:
        proxy.set(mode="reset")
    proxy.heal()
