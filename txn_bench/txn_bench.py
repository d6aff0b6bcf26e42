"""``txn bench``: the product's throughput and latency against two floors on the same clusters,
per mode and concurrency; a table on stdout and every figure as JSON.

- the design floor (``txn_bench.floor``): the product's own SQL without HTTP or coordinator: what
  the product could reach as designed;
- the minimal floor (``txn_bench.minimal_floor``): the least durable work a correct coordinator
  needs: what any design could reach.

For each mode and concurrency, ``repeat`` repetitions of the three sides, their order rotating
from one repetition to the next to spread the machine's noise; each reported figure is the
median of its repetitions. Every run's database work (rows, WAL) is measured on the servers
(``txn_bench.dbwork``).
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import asyncpg

from txn_bench import floor, minimal_floor
from txn_bench.dbwork import Meter, Work
from txn_bench.load import MODES, RunStats, ensure_accounts, http_session, run_product, use_token

SIDES = ("product", "design", "minimal")
# The schema each side writes in (None: the product's own).
SCHEMAS = {"product": None, "design": floor.SCHEMA, "minimal": minimal_floor.SCHEMA}
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
    history: int = 20_000  # rows seeded into each floor's log before measuring
    out: Path | None = field(default_factory=lambda: Path("bench-results.json"))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


Runs = list[tuple[RunStats, Work]]


def _side(runs: Runs) -> dict[str, Any]:
    stats = [s for s, _ in runs]
    return {
        "runs": [{**s.as_dict(), "work": w.as_dict()} for s, w in runs],
        "median": {
            "tps": _median([s.tps for s in stats]),
            "p50_ms": _median([s.p50_ms for s in stats]),
            "p99_ms": _median([s.p99_ms for s in stats]),
        },
        "work": reduce(Work.__add__, (w for _, w in runs), Work()).as_dict(),
        "errors": sum(s.errors for s in stats),
        "errors_total": sum(s.errors_total for s in stats),
    }


def figure(mode: str, concurrency: int, runs: dict[str, Runs]) -> dict[str, Any]:
    sides = {side: _side(runs[side]) for side in SIDES}
    p, d, m = (sides[side]["median"] for side in SIDES)
    return {
        "mode": mode,
        "concurrency": concurrency,
        **sides,
        "ratio_minimal": _ratio(p["tps"], m["tps"]),
        "ratio_design": _ratio(p["tps"], d["tps"]),
        "p50_ratio_minimal": _ratio(p["p50_ms"], m["p50_ms"]),
        "p50_ratio_design": _ratio(p["p50_ms"], d["p50_ms"]),
        "errors": sum(sides[side]["errors_total"] for side in SIDES),
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
        f"  {mode:<8} c={c:<3} rep {rep + 1} {side:<7}: {s.tps:9.1f} txn/s  "
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
    async with http_session(4) as session:
        await ensure_accounts(session, [lg.url for lg in target.ledgers], clients)
    meter = Meter(target.log_dsn, dsns, [floor.SCHEMA, minimal_floor.SCHEMA])
    for module in (floor, minimal_floor):
        say(f"preparing {module.SCHEMA} tables, seeding {config.history} history rows")
        await module.setup(dsns, target.log_dsn, clients, config.history)

    gid_prefix = {side: f"b{run_id}-{side[0]}-" for side in SIDES}
    window = (config.warmup_s, config.duration_s)

    def runner(side: str, mode: str, c: int, gids: str) -> Callable[[], Awaitable[RunStats]]:
        if side == "product":
            return lambda: run_product(target.coordinator_url, names, mode, c, *window, gids)
        run_floor = floor.run_floor if side == "design" else minimal_floor.run_minimal
        return lambda: run_floor(dsns, names, target.log_dsn, mode, c, *window, gids)

    runs: dict[tuple[str, int], dict[str, Runs]] = {}
    turn = 0
    for mode in config.modes:
        for c in config.concurrency:
            runs[mode, c] = {side: [] for side in SIDES}
            for rep in range(config.repeat):
                order = SIDES[turn % 3 :] + SIDES[: turn % 3]
                turn += 1
                for side in order:
                    gids = f"{gid_prefix[side]}{mode}-c{c}-r{rep}"
                    stats, work = await meter.measure(SCHEMAS[side], runner(side, mode, c, gids))
                    runs[mode, c][side].append((stats, work))
                    say(_line(mode, c, rep, side, stats))
    say("reading the product's last counters")
    await meter.finish()

    def pooled(mode: str, side: str) -> Work:
        works = [w for (m, _), by_side in runs.items() if m == mode for _, w in by_side[side]]
        return reduce(Work.__add__, works, Work())

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
        "gid_prefix": gid_prefix,
        "results": [figure(mode, c, by_side) for (mode, c), by_side in runs.items()],
        "work": {
            mode: {side: pooled(mode, side).as_dict() for side in SIDES} for mode in config.modes
        },
    }
    if config.out is not None:
        config.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _grid(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Columns aligned: the first ``left`` to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(report: dict[str, Any]) -> str:
    rows = [
        (
            "mode",
            "conc",
            "product tps",
            "design tps",
            "minimal tps",
            "÷minimal",
            "÷design",
            "prod p50",
            "design p50",
            "min p50",
            "p50 ÷min",
            "p50 ÷design",
            "prod p99",
            "errors",
        )
    ]
    for r in report["results"]:
        p, d, m = (r[side]["median"] for side in SIDES)
        rows.append(
            (
                r["mode"],
                str(r["concurrency"]),
                _fmt(p["tps"], ".1f"),
                _fmt(d["tps"], ".1f"),
                _fmt(m["tps"], ".1f"),
                _fmt(r["ratio_minimal"], ".2f"),
                _fmt(r["ratio_design"], ".2f"),
                _fmt(p["p50_ms"], ".2f", " ms"),
                _fmt(d["p50_ms"], ".2f", " ms"),
                _fmt(m["p50_ms"], ".2f", " ms"),
                _fmt(r["p50_ratio_minimal"], ".2f", "x"),
                _fmt(r["p50_ratio_design"], ".2f", "x"),
                _fmt(p["p99_ms"], ".2f", " ms"),
                str(r["errors"]),
            )
        )
    work = [
        ("mode", "side", "txns", "log rows", "log HOT", "log WAL B", "ledger rows", "ledger WAL B")
    ]
    for mode, by_side in report["work"].items():
        for side, w in by_side.items():
            t = w["per_txn"]
            work.append(
                (
                    mode,
                    side,
                    str(w["transactions"]),
                    _fmt(t["log_rows"], ".2f"),
                    _fmt(t["log_hot_updates"], ".2f"),
                    _fmt(t["log_wal_bytes"], ".0f"),
                    _fmt(t["ledger_rows"], ".2f"),
                    _fmt(t["ledger_wal_bytes"], ".0f"),
                )
            )
    m = report["machine"]
    config = report["config"]
    return "\n".join(
        [
            *_grid(rows),
            "",
            "÷minimal, ÷design: product tps / that floor's tps (1.00: as fast as the floor); "
            "p50 ÷min, p50 ÷design: product p50 / that floor's p50",
            "design floor: the product's own SQL, no HTTP; minimal floor: the least durable work "
            "a correct coordinator needs",
            f"medians of {config['repeat']} repetition(s) of {config['duration_s']:g} s after "
            f"{config['warmup_s']:g} s warm-up, the three sides in rotating order",
            "",
            "database work per committed transaction (measured; all concurrencies and repetitions)",
            *_grid(work, left=2),
            "",
            "rows: inserted + updated + deleted (HOT: updates that wrote no index), from "
            "pg_stat_user_tables; WAL: bytes by WAL position; ledgers summed",
            f"{m['cpu_count']} CPUs, Python {m['python']} ({m['event_loop']}), "
            f"PostgreSQL {m['postgres_version']}, fsync {m['fsync']}",
        ]
    )


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


def with_stack(
    state_dir: str, fsync: bool, use: Callable[[dict[str, Any]], T], coordinators: int = 1
) -> T:
    """``use(state)`` on an embedded stack of 3 ledgers and ``coordinators``, stopped after.
    ``state`` also holds, under ``participant_secrets``, each participant's secret (in memory
    only: a stack's state file never has them)."""
    from txn_devstack.stack import Stack, StackConfig

    with contextlib.ExitStack() as cleanup:
        if state_dir:
            folder = Path(state_dir)
        else:
            folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="txn-bench-")))
            folder.chmod(0o755)  # the Postgres servers run as an unprivileged user under root
        stack_config = StackConfig(
            state_dir=folder,
            shop=False,
            ledgers=3,
            fsync=fsync,
            coordinators=coordinators,
        )
        print(f"booting the stack in {folder} (fsync {'on' if fsync else 'off'})", flush=True)
        # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C, so the stack is stopped.
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
        cleanup.callback(signal.signal, signal.SIGTERM, previous)
        with Stack(stack_config) as stack:
            return use({**stack.state(), "participant_secrets": dict(stack.participant_secrets)})


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
