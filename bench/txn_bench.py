"""``txn bench``: the product's throughput and latency against the floor's (``bench.floor``), per
mode and concurrency, on the same clusters; a table on stdout and every figure as JSON.

For each mode and concurrency, ``repeat`` repetitions of a floor run and a product run, their
order alternating (floor first, then product first, ...) to spread the machine's noise; each
reported figure is the median of its repetitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import asyncpg

from bench import floor
from bench.load import (
    RunStats,
    ensure_accounts,
    http_session,
    log_writes_per_txn,
    run_product,
    use_token,
)

MODES = ("2pc", "saga")
LEDGER_NAME = re.compile(r"^ledger(\d+)$")


T = TypeVar("T")


@dataclass(frozen=True)
class Ledger:
    name: str
    url: str
    dsn: str


@dataclass(frozen=True)
class Target:
    """What the bench drives: a coordinator, the ledgers behind it, and the log's database."""

    coordinator_url: str
    ledgers: list[Ledger]
    log_dsn: str
    source: str

    @staticmethod
    def from_state(state: dict[str, Any], source: str, max_ledgers: int = 3) -> Target:
        """From a stack's state (``stack.json`` of ``txn dev``, or ``Stack.state()``)."""
        found = [
            (int(m.group(1)), Ledger(p["name"], p["url"], p["dsn"]))
            for p in state.get("participants", [])
            if (m := LEDGER_NAME.match(p.get("name", ""))) and p.get("dsn")
        ]
        ledgers = [ledger for _, ledger in sorted(found, key=lambda t: t[0])][:max_ledgers]
        if len(ledgers) < 2:
            raise ValueError(f"{source}: the bench needs at least 2 ledgers; found {len(ledgers)}")
        if not state.get("coordinators"):
            raise ValueError(f"{source}: no coordinator")
        use_token(state.get("api_token", ""))
        return Target(state["coordinators"][0]["url"], ledgers, state["log_dsn"], source)


@dataclass
class BenchConfig:
    modes: tuple[str, ...] = MODES
    concurrency: tuple[int, ...] = (1, 8, 32)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    repeat: int = 3
    history: int = 20_000  # rows seeded into the floor's log before measuring
    out: Path | None = field(default_factory=lambda: Path("bench-results.json"))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _side(runs: list[RunStats]) -> dict[str, Any]:
    return {
        "runs": [r.as_dict() for r in runs],
        "median": {
            "tps": _median([r.tps for r in runs]),
            "p50_ms": _median([r.p50_ms for r in runs]),
            "p99_ms": _median([r.p99_ms for r in runs]),
        },
        "errors": sum(r.errors for r in runs),
        "errors_total": sum(r.errors_total for r in runs),
    }


def figure(
    mode: str, concurrency: int, product: list[RunStats], floor_: list[RunStats]
) -> dict[str, Any]:
    p, f = _side(product), _side(floor_)
    return {
        "mode": mode,
        "concurrency": concurrency,
        "product": p,
        "floor": f,
        "ratio": _ratio(p["median"]["tps"], f["median"]["tps"]),
        "p50_ratio": _ratio(p["median"]["p50_ms"], f["median"]["p50_ms"]),
        "errors": p["errors_total"] + f["errors_total"],
    }


async def _show(dsn: str, *names: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
    finally:
        await conn.close()


async def machine_info(target: Target) -> dict[str, Any]:
    settings = ("server_version", "fsync", "synchronous_commit", "shared_buffers")
    log = await _show(target.log_dsn, *settings)
    ledgers = {lg.name: await _show(lg.dsn, "fsync") for lg in target.ledgers}
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": loop,
        "postgres_version": log["server_version"],
        "fsync": log["fsync"],
        "fsync_ledgers": {name: s["fsync"] for name, s in ledgers.items()},
        "synchronous_commit": log["synchronous_commit"],
        "shared_buffers": log["shared_buffers"],
    }


def _line(mode: str, c: int, rep: int, side: str, s: RunStats) -> str:
    return (
        f"  {mode:<4} c={c:<3} rep {rep + 1} {side:<7}: {s.tps:9.1f} txn/s  "
        f"p50 {s.p50_ms or 0:8.2f} ms  p99 {s.p99_ms or 0:8.2f} ms  errors {s.errors_total}"
    )


async def run_bench(
    target: Target, config: BenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _line: None)
    started = time.time()
    run_id = secrets.token_hex(4)
    names = [lg.name for lg in target.ledgers]
    dsns = [lg.dsn for lg in target.ledgers]
    clients = max(config.concurrency)
    machine = await machine_info(target)
    say(f"floor: preparing {floor.SCHEMA} tables, seeding {config.history} history rows")
    await floor.setup(dsns, target.log_dsn, clients, config.history)
    floor_before = await floor.log_rows(target.log_dsn)
    product_before = await floor.log_rows(target.log_dsn, "public")
    async with http_session(4) as session:
        await ensure_accounts(session, [lg.url for lg in target.ledgers], clients)

    def prefix(side: str, mode: str) -> str:
        return f"b{run_id}-{side[0]}-{mode}-"

    window = (config.warmup_s, config.duration_s)
    results: list[dict[str, Any]] = []
    floor_first = True
    for mode in config.modes:
        for c in config.concurrency:
            runs: dict[str, list[RunStats]] = {"product": [], "floor": []}
            for rep in range(config.repeat):
                order = ("floor", "product") if floor_first else ("product", "floor")
                floor_first = not floor_first
                for side in order:
                    gids = f"{prefix(side, mode)}c{c}-r{rep}"
                    if side == "floor":
                        stats = await floor.run_floor(
                            dsns, names, target.log_dsn, mode, c, *window, gids
                        )
                    else:
                        stats = await run_product(
                            target.coordinator_url, names, mode, c, *window, gids
                        )
                    runs[side].append(stats)
                    say(_line(mode, c, rep, side, stats))
            results.append(figure(mode, c, runs["product"], runs["floor"]))

    log_writes = {
        mode: {
            "product": await log_writes_per_txn(target.log_dsn, "public", prefix("product", mode)),
            "floor": await log_writes_per_txn(target.log_dsn, floor.SCHEMA, prefix("floor", mode)),
            "floor_by_design": floor.log_writes(mode, len(names)),
            "product_gid_prefix": prefix("product", mode),
            "floor_gid_prefix": prefix("floor", mode),
        }
        for mode in config.modes
    }
    report = {
        "run_id": run_id,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {**asdict(config), "out": str(config.out) if config.out else None},
        "target": {
            "source": target.source,
            "coordinator": target.coordinator_url,
            "ledgers": names,
        },
        "machine": machine,
        "log_writes": log_writes,
        "floor_log_rows": {"before": floor_before, "after": await floor.log_rows(target.log_dsn)},
        "product_log_rows": {
            "before": product_before,
            "after": await floor.log_rows(target.log_dsn, "public"),
        },
        "results": results,
    }
    if config.out is not None:
        config.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(report: dict[str, Any]) -> str:
    head = (
        "mode",
        "conc",
        "product tps",
        "floor tps",
        "ratio",
        "prod p50",
        "prod p99",
        "floor p50",
        "floor p99",
        "p50 ratio",
        "errors",
    )
    rows = [head]
    for r in report["results"]:
        p, f = r["product"]["median"], r["floor"]["median"]
        rows.append(
            (
                r["mode"],
                str(r["concurrency"]),
                _fmt(p["tps"], ".1f"),
                _fmt(f["tps"], ".1f"),
                _fmt(r["ratio"], ".2f"),
                _fmt(p["p50_ms"], ".2f", " ms"),
                _fmt(p["p99_ms"], ".2f", " ms"),
                _fmt(f["p50_ms"], ".2f", " ms"),
                _fmt(f["p99_ms"], ".2f", " ms"),
                _fmt(r["p50_ratio"], ".2f", "x"),
                str(r["errors"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = report["machine"]
    writes = ", ".join(
        f"{mode}: product {w['product']['writes_per_txn']} / floor {w['floor']['writes_per_txn']}"
        for mode, w in report["log_writes"].items()
    )
    lines += [
        "",
        f"ratio = product tps / floor tps; p50 ratio = product p50 / floor p50; medians of "
        f"{report['config']['repeat']} repetition(s) of {report['config']['duration_s']:g} s "
        f"after {report['config']['warmup_s']:g} s warm-up",
        f"log writes per transaction ({writes})",
        f"{m['cpu_count']} CPUs, Python {m['python']} ({m['event_loop']}), "
        f"PostgreSQL {m['postgres_version']}, fsync {m['fsync']}",
    ]
    return "\n".join(lines)


def run(target: Target, config: BenchConfig) -> dict[str, Any]:
    """Run the bench on a loop of its own (uvloop when installed, as uvicorn uses)."""

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_bench(target, config, say))


def _embedded(config: BenchConfig, state_dir: str, fsync: bool) -> dict[str, Any]:
    """Boot the stack the bench needs (3 ledgers, 1 coordinator, no shop), run, stop it."""
    return with_stack(
        state_dir, fsync, lambda state: run(Target.from_state(state, "embedded"), config)
    )


def with_stack(state_dir: str, fsync: bool, use: Callable[[dict[str, Any]], T]) -> T:
    """``use(state)`` on an embedded stack of 3 ledgers and 1 coordinator, stopped after."""
    from devstack.stack import Stack, StackConfig

    with contextlib.ExitStack() as cleanup:
        if state_dir:
            folder = Path(state_dir)
        else:
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="txn-bench-")))
            folder.chmod(0o755)  # the Postgres servers run as an unprivileged user under root
        stack_config = StackConfig(state_dir=folder, shop=False, ledgers=3, fsync=fsync)
        print(f"booting the stack in {folder} (fsync {'on' if fsync else 'off'})", flush=True)
        # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C, so the stack is stopped.
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
        cleanup.callback(signal.signal, signal.SIGTERM, previous)
        with Stack(stack_config) as stack:
            return use(stack.state())


def _exit_on_term(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(config: BenchConfig, against: str = "", state_dir: str = "", fsync: bool = True) -> int:
    """The CLI's entry: a running stack (``against``: its stack.json) or an embedded one.
    Exits 1 when any transaction failed."""
    if against:
        path = Path(against)
        report = run(Target.from_state(json.loads(path.read_text()), str(path)), config)
    else:
        report = _embedded(config, state_dir, fsync)
    print()
    print(format_table(report))
    if config.out is not None:
        print(f"\nall figures: {config.out}")
    return 0 if all(r["errors"] == 0 for r in report["results"]) else 1
