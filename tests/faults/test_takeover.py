"""Takeover under load, with the product's default lease and claim settings: a steady stream of
2PC and saga transactions goes to two coordinators; coord1 is SIGKILLed in the middle of it and
not restarted, so coord2 alone must finish everything coord1 held (its orphans) once their
leases lapse: within lease_s + claim_interval_s plus a little slack, measured on the log
database's clock. Afterwards no transaction may have two outcomes, every participant's barrier
rows must match the log's final status, no prepared transaction may remain, and each ledger's
balance must be its opening plus exactly the deltas of the committed transactions.

``run_scenario`` and ``check_invariants`` are also used by ``txn_bench/takeover.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from coordinator.settings import Settings
from tests.helpers import (
    LOG_EVENTS,
    TERMINAL,
    TEST_API_TOKEN,
    adjust_body,
    api_client,
    balances,
    open_accounts,
    prepared_xacts,
    unique,
)
from txn_devstack.stack import Stack, StackConfig

# The product's defaults, deliberately not overridden: the takeover is measured against them.
LEASE_S = float(Settings.model_fields["lease_s"].default)
CLAIM_INTERVAL_S = float(Settings.model_fields["claim_interval_s"].default)
SLACK_S = 2.0
BOUND_S = LEASE_S + CLAIM_INTERVAL_S + SLACK_S

# Only the durable backoff and the call timeout are shortened (no TXN_LEASE_S, no
# TXN_CLAIM_INTERVAL_S here).
TAKEOVER_ENV = {
    "TXN_RESCHEDULE_INITIAL_S": "0.1",
    "TXN_RESCHEDULE_MAX_S": "1",
    "TXN_CALL_TIMEOUT_S": "5",
}

LEDGERS = ("ledger1", "ledger2", "ledger3")  # branch i of every transaction is on LEDGERS[i]
OPENING = 10**12
HUGE = -(10**15)  # more than any balance: refused (409), so the transaction aborts
CLIENTS = 6
STREAM_S = 4.0
KILL_AFTER_S = 2.0
SUBMIT_WAIT_S = 0.5  # a short ?wait: a closed loop that follows what the stack can do
PAUSE_AFTER_ERROR_S = 0.1  # a dead coord1 refuses at once: do not spin on it
SETTLE_S = 90.0  # bound for every recorded transaction to become terminal

LIVE_OWNED = """
SELECT now() AS at, coalesce(array_agg(gid ORDER BY gid), '{}') AS gids
FROM transactions WHERE owner = $1 AND status NOT IN ('committed', 'aborted')
"""


@dataclass
class Submission:
    gid: str
    account: str
    coordinator: str
    mode: str
    deltas: tuple[int, ...]  # per ledger, in LEDGERS order
    designed_to_abort: bool
    http_status: int | None = None
    error: str | None = None  # the POST's transport error: no answer was received


@dataclass
class Outcome:
    seed: int
    accounts: list[str]
    submissions: list[Submission]
    kill_at: datetime
    orphans: list[str]
    final: dict[str, str] = field(default_factory=dict)  # gid -> terminal status (GET)
    unknown: list[str] = field(default_factory=list)  # gids coord2 answered 404 for
    orphan_done: dict[str, datetime] = field(default_factory=dict)  # orphan -> updated_at
    # orphan -> its first log entry after the kill: the survivor's claim, or its presumed-abort
    # decision when asked about it (a GET) once the lease had run out.
    orphan_picked: dict[str, datetime] = field(default_factory=dict)
    takeover_s: float = 0.0
    pickup_s: float = 0.0

    def summary(self) -> str:
        statuses = Counter(self.final.values())
        done = sorted((t - self.kill_at).total_seconds() for t in self.orphan_done.values())
        picked = sorted((t - self.kill_at).total_seconds() for t in self.orphan_picked.values())
        slowest = max(self.orphan_done, key=lambda gid: self.orphan_done[gid])
        return (
            f"takeover {self.takeover_s:.2f}s (bound {BOUND_S:.1f}s): {len(self.orphans)} "
            f"orphans picked up by the survivor after {picked[0]:.2f}..{picked[-1]:.2f}s, "
            f"terminal after {done[0]:.2f}..{done[-1]:.2f}s (slowest {slowest}); "
            f"{len(self.submissions)} submissions: {dict(statuses)}, "
            f"{len(self.unknown)} never logged; {len(self.accounts)} account(s) per ledger; "
            f"seed {self.seed}"
        )


@pytest.fixture(scope="module")
def takeover_stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            state_dir=state_root / "takeover",
            coordinators=2,
            ledgers=len(LEDGERS),
            fsync=False,
            coordinator_env=dict(TAKEOVER_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _body(sub: Submission) -> dict[str, Any]:
    return adjust_body(sub.gid, sub.mode, sub.account, list(zip(LEDGERS, sub.deltas, strict=True)))


async def _live_owned(conn: asyncpg.Connection, owner: str) -> tuple[datetime, list[str]]:
    row = await conn.fetchrow(LIVE_OWNED, owner)
    return row["at"], list(row["gids"])


async def run_scenario(
    stack: Stack,
    client: httpx.AsyncClient,
    seed: int | None = None,
    accounts: int = 1,
    clients: int = CLIENTS,
    survivor_clients: int = 0,
    stream_s: float = STREAM_S,
) -> Outcome:
    """Stream transactions to both coordinators, SIGKILL coord1 (its restart policy off) in
    the middle, wait until coord2 has finished everything, and measure the takeover.

    ``accounts``: accounts opened per ledger (client task k uses account k mod accounts); 1 is
    the scenario of the test: every transaction contends for the same row on each ledger.
    ``survivor_clients`` more clients submit to coord2 alone, all along: its own steady load."""
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    coord1, coord2 = stack.service("coord1"), stack.service("coord2")
    assert coord1.pid is not None and coord2.pid is not None, "both coordinators must be up"
    run = unique("takeover")
    names = [f"{run}-a{k}" for k in range(accounts)]
    for account in names:
        await open_accounts(client, {p.name: p.url for p in stack.participants}, account, OPENING)

    loop = asyncio.get_running_loop()
    stop_at = loop.time() + stream_s
    numbers = itertools.count()
    submissions: list[Submission] = []

    async def submitter(k: int) -> None:
        while loop.time() < stop_at:
            n = next(numbers)
            coord = coord2 if k >= clients else (coord1, coord2)[n % 2]
            designed_to_abort = n % 5 == 4
            deltas = [rng.choice([-1, 1]) * rng.randint(1, 9) for _ in LEDGERS]
            if designed_to_abort:
                deltas[rng.randrange(len(LEDGERS))] = HUGE
            sub = Submission(
                gid=f"{run}-{n:05d}",
                account=names[k % accounts],
                coordinator=coord.name,
                mode=("2pc", "saga")[(n // 2) % 2],
                deltas=tuple(deltas),
                designed_to_abort=designed_to_abort,
            )
            submissions.append(sub)
            try:
                reply = await client.post(
                    f"{coord.url}/v1/transactions?wait={SUBMIT_WAIT_S}", json=_body(sub)
                )
                sub.http_status = reply.status_code
            except httpx.TransportError as e:
                sub.error = repr(e)
                await asyncio.sleep(PAUSE_AFTER_ERROR_S)

    kill: dict[str, Any] = {}

    async def killer(conn: asyncpg.Connection) -> None:
        await asyncio.sleep(KILL_AFTER_S)
        pid = coord1.pid
        assert pid is not None, "coord1 died before it was killed"
        coord1.restart = False  # the survivor, not a restarted coord1, must do the work
        # Kill while coord1 holds live work. Its transactions finish in milliseconds, so look
        # while it is frozen (SIGSTOP): what the log shows it holding then, it still holds
        # when the SIGKILL lands (bounded: a steady stream gives it some at once).
        for _ in range(150):
            os.kill(pid, signal.SIGSTOP)
            if (await _live_owned(conn, coord1.name))[1]:
                break
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        for _ in range(1000):
            if coord1.pid is None:
                break
            await asyncio.sleep(0.005)
        assert coord1.pid is None, f"coord1 (pid {pid}) survived SIGKILL"
        # The kill time and the orphans, both from the log database, right after the kill.
        kill["at"], kill["orphans"] = await _live_owned(conn, coord1.name)

    conn = await asyncpg.connect(stack.log_dsn)
    try:
        everyone = range(clients + survivor_clients)
        await asyncio.gather(*(submitter(k) for k in everyone), killer(conn))
        outcome = Outcome(
            seed=seed,
            accounts=names,
            submissions=submissions,
            kill_at=kill["at"],
            orphans=kill["orphans"],
        )
        await _wait_all_terminal(client, coord2.url, outcome)
        rows = await conn.fetch(
            "SELECT gid, status, updated_at FROM transactions WHERE gid = ANY($1)",
            outcome.orphans,
        )
        picked = await conn.fetch(
            f"SELECT gid, min(at) AS at FROM {LOG_EVENTS} "
            "WHERE gid = ANY($1) AND at > $2 GROUP BY gid",
            outcome.orphans,
            outcome.kill_at,
        )
    finally:
        await conn.close()
    assert outcome.orphans, f"coord1 held no live transaction when it was killed (seed {seed})"
    assert {r["gid"] for r in rows} == set(outcome.orphans)
    assert all(r["status"] in TERMINAL for r in rows), rows
    outcome.orphan_done = {r["gid"]: r["updated_at"] for r in rows}
    outcome.orphan_picked = {r["gid"]: r["at"] for r in picked}
    assert set(outcome.orphan_picked) == set(outcome.orphans), picked
    outcome.takeover_s = (max(outcome.orphan_done.values()) - outcome.kill_at).total_seconds()
    outcome.pickup_s = (max(outcome.orphan_picked.values()) - outcome.kill_at).total_seconds()
    return outcome


async def _wait_all_terminal(client: httpx.AsyncClient, url: str, outcome: Outcome) -> None:
    """Poll the survivor until every recorded gid is terminal (or unknown to the log)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    pending = {s.gid for s in outcome.submissions}
    last: dict[str, Any] = {}
    while pending and loop.time() < deadline:
        for gid in sorted(pending):
            try:
                reply = await client.get(f"{url}/v1/transactions/{gid}?events=false")
            except httpx.TransportError as e:
                last[gid] = repr(e)
                continue
            if reply.status_code == 404:
                outcome.unknown.append(gid)
                pending.discard(gid)
            elif reply.status_code == 200 and reply.json()["status"] in TERMINAL:
                outcome.final[gid] = reply.json()["status"]
                pending.discard(gid)
            else:
                last[gid] = reply.json() if reply.status_code == 200 else reply.status_code
        if pending:
            await asyncio.sleep(0.2)
    stuck = {gid: last.get(gid) for gid in sorted(pending)[:5]}
    assert not pending, (
        f"{len(pending)} transactions not terminal after {SETTLE_S}s "
        f"(seed {outcome.seed}); e.g. {stuck}"
    )


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def check_invariants(stack: Stack, outcome: Outcome) -> None:
    """What the log says happened must be what happened at every participant."""
    by_gid = {s.gid: s for s in outcome.submissions}
    seed = f"seed {outcome.seed}"

    # Nothing coord2 calls unknown may have been answered by a coordinator: only a POST to
    # coord1 that got no answer (it was being killed, or dead) may have left nothing behind.
    for gid in outcome.unknown:
        sub = by_gid[gid]
        assert sub.coordinator == "coord1" and sub.error is not None, (sub, seed)
    for sub in outcome.submissions:
        if sub.error is None:
            assert sub.http_status == 201, (sub, seed)
    # A transaction that cannot commit did not.
    for gid, status in outcome.final.items():
        if by_gid[gid].designed_to_abort:
            assert status == "aborted", (by_gid[gid], seed)

    gids = [s.gid for s in outcome.submissions]
    logged = {
        r["gid"]: r
        for r in await _fetch(
            stack.log_dsn,
            "SELECT gid, mode, status, owner FROM transactions WHERE gid = ANY($1)",
            gids,
        )
    }
    assert set(logged) == set(outcome.final), seed
    for gid, row in logged.items():
        assert row["status"] == outcome.final[gid] and row["mode"] == by_gid[gid].mode, row
    # Orphans were finished by the survivor.
    for gid in outcome.orphans:
        assert logged[gid]["owner"] == "coord2", (logged[gid], seed)

    # No transaction has two outcomes: one 'finished' event, with the logged status, and
    # 'decided' events (the commit point / the decision to compensate) that never disagree.
    finished: dict[str, list[str]] = defaultdict(list)
    decided: dict[str, set[str]] = defaultdict(set)
    for r in await _fetch(
        stack.log_dsn,
        f"SELECT gid, kind, detail->>'status' AS status FROM {LOG_EVENTS} "
        "WHERE gid = ANY($1) AND kind IN ('decided', 'finished') ORDER BY gid, id",
        gids,
    ):
        if r["kind"] == "finished":
            finished[r["gid"]].append(r["status"])
        else:
            decided[r["gid"]].add(r["status"])
    allowed = {
        ("2pc", "committed"): {"committing"},
        ("2pc", "aborted"): {"aborting"},
        ("saga", "committed"): set(),
        ("saga", "aborted"): {"compensating"},
    }
    for gid, status in outcome.final.items():
        assert finished[gid] == [status], (gid, finished[gid], status, seed)
        assert len(decided[gid]) <= 1, (gid, decided[gid], seed)
        assert decided[gid] <= allowed[(by_gid[gid].mode, status)], (gid, decided[gid], status)

    # Every participant's barrier rows match the log's final status.
    dsns = {p.name: p.dsn for p in stack.participants if p.dsn}
    barrier: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    for idx, ledger in enumerate(LEDGERS):
        for r in await _fetch(
            dsns[ledger],
            "SELECT gid, branch, op, outcome FROM txn_barrier WHERE gid = ANY($1)",
            gids,
        ):
            assert r["branch"] == idx, (ledger, dict(r))
            barrier[(r["gid"], idx)][r["op"]] = r["outcome"]
    for gid in outcome.unknown:
        for idx in range(len(LEDGERS)):
            assert not barrier.get((gid, idx)), (gid, idx, barrier.get((gid, idx)), seed)
    for gid, status in outcome.final.items():
        mode = by_gid[gid].mode
        for idx in range(len(LEDGERS)):
            rows = barrier.get((gid, idx), {})
            where = (gid, mode, status, LEDGERS[idx], rows, seed)
            if mode == "2pc" and status == "committed":
                assert rows == {"2pc": "prepared"}, where
            elif mode == "2pc":
                assert rows.get("2pc") != "prepared", where
            elif status == "committed":
                assert rows == {"action": "done"}, where
            elif rows.get("action") == "done":
                assert rows.get("compensate") == "done", where

    # No prepared transaction is left anywhere.
    for ledger in LEDGERS:
        assert await prepared_xacts(dsns[ledger]) == [], (ledger, seed)

    # Each ledger holds its opening plus exactly the committed transactions' deltas.
    for account in outcome.accounts:
        committed = [
            by_gid[gid]
            for gid, status in outcome.final.items()
            if status == "committed" and by_gid[gid].account == account
        ]
        expected = {
            ledger: OPENING + sum(sub.deltas[idx] for sub in committed)
            for idx, ledger in enumerate(LEDGERS)
        }
        assert await balances(dsns, account) == expected, (account, seed)


async def test_survivor_takes_over_a_killed_coordinators_work_within_the_lease(
    takeover_stack: Stack,
) -> None:
    coord1 = takeover_stack.service("coord1")
    try:
        async with api_client(timeout=10) as client:
            # Six accounts per ledger: a realistic spread. (All clients on one row per ledger
            # measures lock contention instead: prepares wait up to TXNP_LOCK_TIMEOUT_MS.)
            outcome = await run_scenario(takeover_stack, client, accounts=6)
            print(outcome.summary())
            await check_invariants(takeover_stack, outcome)
        # The survivor picks every orphan up within the bound (its lease ran out, it was
        # claimed or asked about), and finishes every one of them within it too.
        assert outcome.pickup_s <= BOUND_S, outcome.summary()
        assert outcome.takeover_s <= BOUND_S, outcome.summary()
    finally:
        coord1.restart = True
        await asyncio.to_thread(takeover_stack.restart, "coord1")


# Under 32 clients of its own, the survivor's claims and drives compete with its submissions:
# a few seconds more than the idle bound.
LOADED_BOUND_S = BOUND_S + 2.0


async def test_a_busy_survivor_still_takes_over_within_a_stated_bound(
    takeover_stack: Stack,
) -> None:
    """coord2 keeps 32 clients of its own busy (more drives in flight than its
    TXN_MAX_RECOVERING of 2, which bounds recovered drives only) while coord1, with work of its
    own, is killed: every orphan is still picked up and finished within LOADED_BOUND_S."""
    coord1 = takeover_stack.service("coord1")
    await asyncio.to_thread(takeover_stack.restart, "coord2", {"TXN_MAX_RECOVERING": "2"})
    try:
        async with api_client(timeout=30) as client:
            # The survivor's own load lasts past the bound after the kill: a recovery held
            # back by it (as when max_recovering counted fresh drives) would miss the bound.
            outcome = await run_scenario(
                takeover_stack,
                client,
                accounts=38,
                clients=CLIENTS,
                survivor_clients=32,
                stream_s=KILL_AFTER_S + LOADED_BOUND_S + 2.0,
            )
            print(outcome.summary())
            await check_invariants(takeover_stack, outcome)
        assert outcome.pickup_s <= LOADED_BOUND_S, outcome.summary()
        assert outcome.takeover_s <= LOADED_BOUND_S, outcome.summary()
    finally:
        coord1.restart = True
        await asyncio.to_thread(takeover_stack.restart, "coord1")
        await asyncio.to_thread(takeover_stack.restart, "coord2", {"TXN_MAX_RECOVERING": "500"})
