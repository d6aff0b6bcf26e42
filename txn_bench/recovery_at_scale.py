"""Recovery at scale: N transactions left in flight by a killed coordinator, driven to a terminal
status by the restarted one, against the time the same N take when nothing fails.

    .venv/bin/python txn_bench/recovery_at_scale.py [--n 1000] [--concurrency 32] [--modes 2pc,saga]

Scenario, on one embedded stack, per mode: (1) baseline: submit N transfers across the three
ledgers and time until all are terminal; (2) freeze the ledgers (SIGSTOP), submit N more
(logged, their first calls hanging), SIGKILL the coordinator, thaw the ledgers, restart the
coordinator and time until all N are terminal. Claims come in batches (TXN_CLAIM_BATCH); the
script reports how many claim statements recovery needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from txn_client.http11 import Client
from txn_devstack.stack import Stack, StackConfig, auth_headers

TERMINAL = ("committed", "aborted")
REQUEST_TIMEOUT_S = 300.0  # one call's bound (5 min, as before); a submission waits <= ?wait=
METRICS_CAP = 16 * 1024 * 1024  # the /metrics page, whole


async def _submit_all(
    base: str, token: str, gids: list[str], accounts: list[str], wait_s: float, mode: str = "2pc"
) -> None:
    """Submit with one client per account; with ``wait_s`` each waits for the outcome, so at
    most ``len(accounts)`` transactions are in flight (a client-paced load, as in production)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for gid in gids:
        queue.put_nowait(gid)
    client = Client(limit=max(len(accounts), 1), headers=auth_headers(token))

    async def worker(account: str) -> None:
        while not queue.empty():
            gid = queue.get_nowait()
            branches: list[dict[str, Any]] = [
                {
                    "participant": f"ledger{i}",
                    "action": "/accounts/adjust",
                    "payload": {"account": account, "delta": 1},
                }
                for i in (1, 2, 3)
            ]
            if mode == "saga":
                for b in branches:
                    b["compensation"] = "/accounts/adjust/undo"
            body = {"gid": gid, "mode": mode, "branches": branches}
            url = f"{base}/v1/transactions?wait={wait_s}"
            reply = await client.call("POST", url, REQUEST_TIMEOUT_S, json=body)
            if reply.status != 201:
                raise RuntimeError(f"{gid}: {reply.status} {reply.body.decode(errors='replace')}")

    try:
        # One account per client: the load measures the protocol, not contention on one row.
        await asyncio.gather(*(worker(account) for account in accounts))
    finally:
        await client.close()


async def _wait_terminal(log_dsn: str, prefix: str, n: int, timeout_s: float) -> float:
    """Seconds until all ``n`` transactions with this gid prefix are terminal (log clock)."""
    conn = await asyncpg.connect(log_dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = await conn.fetchval(
                "SELECT count(*) FROM transactions WHERE gid LIKE $1 || '%' "
                "AND status IN ('committed', 'aborted')",
                prefix,
            )
            if done >= n:
                return time.monotonic()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"only {done} of {n} terminal after {timeout_s}s")
    finally:
        await conn.close()


async def _metric(base: str, token: str, name: str) -> float:
    client = Client(limit=1, cap=METRICS_CAP, headers=auth_headers(token))
    try:
        reply = await client.call("GET", f"{base}/metrics", REQUEST_TIMEOUT_S)
    finally:
        await client.close()
    if reply.truncated:
        raise RuntimeError(f"{base}/metrics: over {METRICS_CAP} bytes")
    for line in reply.body.decode(errors="replace").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


async def _open_accounts(stack: Stack, accounts: list[str]) -> None:
    client = Client(limit=1, headers=auth_headers(stack.api_token))
    try:
        for p in stack.participants:
            for account in accounts:
                body = {"id": account, "balance": 0}
                reply = await client.call("POST", f"{p.url}/accounts", REQUEST_TIMEOUT_S, json=body)
                if reply.status not in (201, 409):
                    raise RuntimeError(reply.body.decode(errors="replace"))
    finally:
        await client.close()


def run(
    stack: Stack,
    n: int,
    concurrency: int,
    timeout_s: float = 600,
    mode: str = "2pc",
    tag: str | None = None,
) -> dict[str, Any]:
    """The two phases on a running stack, in one mode; returns the measured figures, and what
    this run wrote: its gids start with ``base_prefix`` and ``crash_prefix``, and the only
    accounts it moves (opened at 0 on every ledger) with ``account_prefix``. ``tag`` names them
    (unique when not given), so that the run's own can be told from others' on a shared stack."""
    coord = stack.coordinators[0]
    tag = tag or f"{os.getpid()}-{time.monotonic_ns()}"
    account_prefix = f"bench-{tag}-"
    accounts = [f"{account_prefix}{i}" for i in range(concurrency)]
    asyncio.run(_open_accounts(stack, accounts))

    base_prefix = f"base-{tag}-"
    started = time.monotonic()
    asyncio.run(
        _submit_all(
            coord.url,
            stack.api_token,
            [f"{base_prefix}{i}" for i in range(n)],
            accounts,
            60,
            mode,
        )
    )
    baseline = asyncio.run(_wait_terminal(stack.log_dsn, base_prefix, n, timeout_s)) - started

    crash_prefix = f"crash-{tag}-"
    for p in stack.participants:
        p.signal(signal.SIGSTOP)
    try:
        # No waiting here: every submission is logged and left hanging on a frozen ledger.
        asyncio.run(
            _submit_all(
                coord.url,
                stack.api_token,
                [f"{crash_prefix}{i}" for i in range(n)],
                accounts,
                0,
                mode,
            )
        )
        coord.restart = False
        assert coord.pid is not None
        os.kill(coord.pid, signal.SIGKILL)
        if coord.proc is not None:
            coord.proc.wait()  # reap it: it is ours
    finally:
        for p in stack.participants:
            p.signal(signal.SIGCONT)
    restarted = time.monotonic()
    coord.restart = True
    stack.restart(coord.name)
    recovery = asyncio.run(_wait_terminal(stack.log_dsn, crash_prefix, n, timeout_s)) - restarted
    recovered = asyncio.run(_metric(coord.url, stack.api_token, "txn_recovered_total"))
    batches = asyncio.run(_metric(coord.url, stack.api_token, "txn_claim_batches_total"))
    return {
        "mode": mode,
        "n": n,
        "concurrency": concurrency,
        "baseline_s": round(baseline, 2),
        "recovery_s": round(recovery, 2),
        "ratio": round(recovery / baseline, 2),
        "throughput_ratio": round(baseline / recovery, 2),
        "recovered": int(recovered),
        "claim_statements": int(batches),
        "base_prefix": base_prefix,
        "crash_prefix": crash_prefix,
        "account_prefix": account_prefix,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", default="2pc,saga", help="comma-separated: 2pc, saga")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="txn-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the Postgres servers run as an unprivileged user under root
        with Stack(StackConfig(state_dir=Path(tmp))) as stack:
            for mode in args.modes.split(","):
                figures = run(stack, args.n, args.concurrency, mode=mode.strip())
                print(json.dumps(figures, indent=2), flush=True)


if __name__ == "__main__":
    main()
