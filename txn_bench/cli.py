"""``txn bench``: registered on the ``txn`` command by ``coordinator.cli``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

MODES = ("2pc", "saga", "saga-seq")  # txn_bench.load.MODES, without importing the load's libraries


def _csv_ints(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {value}") from e
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("concurrencies must be positive integers")
    return out


def _modes(value: str) -> tuple[str, ...]:
    out = tuple(part.strip() for part in value.split(",") if part.strip())
    if not out or any(m not in MODES for m in out):
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return out


def _positive(value: str) -> float:
    n = float(value)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return n


def _growth(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from txn_bench import growth
    from txn_bench.load import ensure_accounts, http_session
    from txn_bench.txn_bench import Target, with_stack

    def use(state: dict[str, Any]) -> dict[str, Any]:
        target = Target.from_state(state, args.against or "embedded")
        ledgers = [lg.name for lg in target.ledgers]
        c = max(args.concurrency)
        report: dict[str, Any] = {}

        async def go() -> None:
            async with http_session(4) as session:
                await ensure_accounts(session, [lg.url for lg in target.ledgers], c)
            if args.growth:
                print(f"growth: 2PC at concurrency {c}, {args.duration:g}s per run", flush=True)
                report["growth"] = await growth.growth(
                    target.coordinator_url,
                    ledgers,
                    target.log_dsn,
                    args.growth,
                    c,
                    args.duration,
                    args.warmup,
                    print,
                )
            for rows, key in ((args.purge, "purge"), (args.barrier_purge, "barrier_purge")):
                if not rows:
                    continue
                from txn_bench import purge

                print(f"{key}: 2PC at concurrency {c}, {args.duration:g}s per run", flush=True)
                barriers = None
                if key == "barrier_purge":
                    barriers = purge.ledger_barriers(state, target)
                report[key] = await purge.purge_under_load(
                    target.coordinator_url,
                    ledgers,
                    target.log_dsn,
                    rows,
                    c,
                    args.duration,
                    args.warmup,
                    print,
                    barriers,
                )
            if args.scale_out:
                from txn_bench import scaleout

                urls = [coord["url"] for coord in state["coordinators"]]
                print(f"scale-out: 2PC at concurrency {c}, {args.duration:g}s per run", flush=True)
                report["scale_out"] = await scaleout.scale_out(
                    urls, ledgers, c, args.duration, args.warmup, args.repeat, print
                )
            if args.console:
                from txn_bench import console_pages

                report["console"] = await console_pages.pages(
                    target.coordinator_url,
                    state["api_token"],
                    target.log_dsn,
                    ledgers[0],
                    args.console,
                    print,
                )
            if args.cpu:
                report["cpu"] = await _cpu(state, target, args.modes, c, args.duration)
            if args.rss:
                pid = state["coordinators"][0]["pid"]
                print(f"memory: 2PC at concurrency {c} for {args.rss:g}s, coordinator pid {pid}")
                report["memory"] = await growth.memory(
                    target.coordinator_url, ledgers, pid, c, args.rss, 5.0, print
                )

        asyncio.run(go())
        return report

    if args.against:
        report = use(json.loads(Path(args.against).read_text()))
    else:
        coordinators = 3 if args.scale_out else 1
        report = with_stack(args.state_dir, not args.no_fsync, use, coordinators)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"all figures: {args.out}")
    return 0


async def _cpu(
    state: dict[str, Any], target: Any, modes: tuple[str, ...], c: int, duration: float
) -> list[dict[str, Any]]:
    from txn_bench import cpushare, floor
    from txn_bench.load import run_product

    names = [lg.name for lg in target.ledgers]
    dsns = [lg.dsn for lg in target.ledgers]
    await floor.setup(dsns, target.log_dsn, c, 20_000)
    out: list[dict[str, Any]] = []
    for mode in modes:
        prefix = f"cpu{int(time.time())}-{mode}"
        product = await cpushare.measure(
            state,
            run_product(target.coordinator_url, names, mode, c, 0.0, duration, prefix + "-p"),
        )
        floor_ = await cpushare.measure(
            state, floor.run_floor(dsns, names, target.log_dsn, mode, c, 0.0, duration, prefix)
        )
        print(cpushare.table(mode, c, product, floor_), flush=True)
        out.append({"mode": mode, "concurrency": c, "product": product, "floor": floor_})
    return out


def _bench(args: argparse.Namespace) -> int:
    from txn_bench.txn_bench import BenchConfig, main

    if any(
        (
            args.growth,
            args.rss,
            args.cpu,
            args.console,
            args.purge,
            args.barrier_purge,
            args.scale_out,
        )
    ):
        return _growth(args)

    config = BenchConfig(
        modes=args.modes,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeat=args.repeat,
        history=args.floor_history,
        out=Path(args.out) if args.out else None,
    )
    return main(config, against=args.against, state_dir=args.state_dir, fsync=not args.no_fsync)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench",
        help="throughput and latency of 2PC and sagas against two bare-database floors",
        description="Closed-loop clients of the coordinator's REST API (one adjust per ledger) "
        "against two bare asyncpg scripts on the same clusters, per mode and concurrency: the "
        "design floor (the product's own SQL, no HTTP) and the minimal floor (the least durable "
        "work a correct coordinator needs: one log row, a prepare per ledger in one round trip, "
        "three log writes per 2PC transaction and two per saga). Also measures the database "
        "work per transaction (rows and WAL) of each. Prints two tables and writes JSON.",
    )
    bench.add_argument("--against", default="", help="stack.json of a running `txn dev`")
    bench.add_argument("--state-dir", default="", help="embedded stack's data here (default: temp)")
    bench.add_argument("--no-fsync", action="store_true", help="embedded stack without fsync")
    bench.add_argument(
        "--modes",
        type=_modes,
        default=MODES,
        help="2pc; saga (steps in parallel: depends_on []); saga-seq (steps in turn); "
        "default: 2pc,saga,saga-seq",
    )
    bench.add_argument(
        "--concurrency", type=_csv_ints, default=(1, 8, 32), help="clients; default: 1,8,32"
    )
    bench.add_argument("--duration", type=_positive, default=10.0, help="seconds measured")
    bench.add_argument(
        "--warmup", type=float, default=2.0, help="seconds before measuring (excluded)"
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="repetitions of product, design floor and minimal floor, in rotating order; "
        "figures are medians",
    )
    bench.add_argument(
        "--floor-history", type=int, default=20_000, help="rows seeded into each floor's log"
    )
    bench.add_argument("--out", default="bench-results.json", help="JSON results ('' for none)")
    bench.add_argument(
        "--growth",
        type=int,
        default=0,
        help="instead: throughput before/with/after this many finished transactions in the log",
    )
    bench.add_argument(
        "--rss",
        type=float,
        default=0.0,
        help="instead: the coordinator's memory over a run of this many seconds",
    )
    bench.add_argument(
        "--purge",
        type=int,
        default=0,
        help="instead: throughput while this many finished transactions are purged, "
        "against runs without",
    )
    bench.add_argument(
        "--barrier-purge",
        type=int,
        default=0,
        help="instead: throughput while the ledgers' barrier retention deletes this many "
        "rows each, against runs without",
    )
    bench.add_argument(
        "--scale-out",
        action="store_true",
        help="instead: throughput with 1, 2 and 3 coordinators on one log (an embedded stack "
        "of three, or --against one with several)",
    )
    bench.add_argument(
        "--console",
        type=int,
        default=0,
        help="instead: the console's pages before and with this many finished transactions",
    )
    bench.add_argument(
        "--cpu",
        action="store_true",
        help="instead: CPU per transaction by process (from /proc), product and design "
        "floor, per mode at the largest concurrency",
    )
    bench.set_defaults(func=_bench)
