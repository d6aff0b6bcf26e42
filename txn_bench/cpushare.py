"""``txn bench --cpu``: where a run's CPU goes, by process, product against floor (from /proc).

For every process of the stack (each coordinator, each participant service, each Postgres
cluster with all its backends) and the bench's own process (the load generator, or the floor
script), the CPU time it used during one run, as a share of a core and in milliseconds per
committed transaction, beside the whole machine's busy time from ``/proc/stat``. A backend that
exits during the run is counted through its postmaster's reaped-children time."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from txn_bench.load import RunStats

HZ = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, own CPU ticks, reaped children's CPU ticks), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
    return ppid, utime + stime, cutime + cstime


def _machine_busy() -> int:
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in first]
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


def groups_of(state: dict[str, Any]) -> dict[int, str]:
    """Root pid -> group name, from a stack's state (``stack.json``)."""
    roots: dict[int, str] = {os.getpid(): "bench process (load or floor)"}
    for c in state.get("coordinators", []):
        if c.get("pid"):
            roots[int(c["pid"])] = f"coordinator {c.get('name', '')}".strip()
    for p in state.get("participants", []):
        if p.get("pid"):
            roots[int(p["pid"])] = f"service {p['name']}"
    for cluster in state.get("clusters", []):
        if cluster.get("pid"):
            roots[int(cluster["pid"])] = f"postgres {cluster['name']}"
    return roots


def snapshot(roots: dict[int, str]) -> dict[str, int]:
    """CPU ticks per group: its live processes' own time, plus each root's reaped children."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    ticks = dict.fromkeys(roots.values(), 0)
    for pid, (_ppid, own, reaped) in table.items():
        seen, ancestor = 0, pid
        while ancestor in table and ancestor not in roots and seen < 64:
            ancestor, seen = table[ancestor][0], seen + 1
        if ancestor in roots:
            ticks[roots[ancestor]] += own + (reaped if pid == ancestor else 0)
    return ticks


async def measure(state: dict[str, Any], run: Awaitable[RunStats]) -> dict[str, Any]:
    """Await ``run`` (a run with no warm-up: every completion counts) and split its CPU."""
    roots = groups_of(state)
    before, busy0, t0 = snapshot(roots), _machine_busy(), time.perf_counter()
    stats = await run
    after, busy1, elapsed = snapshot(roots), _machine_busy(), time.perf_counter() - t0
    n = max(stats.committed, 1)

    def figures(ticks: int) -> dict[str, float]:
        seconds = ticks / HZ
        return {
            "core_share": round(seconds / elapsed, 3),
            "ms_per_txn": round(seconds / n * 1000, 3),
        }

    return {
        "tps": stats.tps,
        "committed": stats.committed,
        "errors": stats.errors_total,
        "machine_busy": figures(busy1 - busy0),
        "by_process": {
            name: figures(after[name] - before.get(name, 0))
            for name in sorted(after, key=lambda k: before.get(k, 0) - after[k])
        },
    }


def table(mode: str, concurrency: int, product: dict[str, Any], floor: dict[str, Any]) -> str:
    lines = [
        f"{mode} at {concurrency} clients: product {product['tps']} txn/s, "
        f"floor {floor['tps']} txn/s",
        f"  {'CPU, ms per committed transaction':<36} {'product':>9} {'floor':>9}",
    ]
    names = list(product["by_process"])
    for name in names:
        p = product["by_process"][name]["ms_per_txn"]
        f = floor["by_process"].get(name, {}).get("ms_per_txn", 0.0)
        lines.append(f"  {name:<36} {p:9.2f} {f:9.2f}")
    lines.append(
        f"  {'whole machine (busy)':<36} {product['machine_busy']['ms_per_txn']:9.2f} "
        f"{floor['machine_busy']['ms_per_txn']:9.2f}"
    )
    return "\n".join(lines)
