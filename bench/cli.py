"""``txn bench``: registered on the ``txn`` command by ``coordinator.cli``."""

from __future__ import annotations

import argparse
from pathlib import Path

MODES = ("2pc", "saga")


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


def _bench(args: argparse.Namespace) -> int:
    from bench.txn_bench import BenchConfig, main

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
        help="throughput and latency of 2PC and sagas against the bare-database floor",
        description="Closed-loop clients of the coordinator's REST API (one adjust per ledger) "
        "against a bare asyncpg script doing the same database work on the same clusters "
        "(the floor), per mode and concurrency; prints a table and writes JSON.",
    )
    bench.add_argument("--against", default="", help="stack.json of a running `txn dev`")
    bench.add_argument("--state-dir", default="", help="embedded stack's data here (default: temp)")
    bench.add_argument("--no-fsync", action="store_true", help="embedded stack without fsync")
    bench.add_argument("--modes", type=_modes, default=MODES, help="default: 2pc,saga")
    bench.add_argument(
        "--concurrency", type=_csv_ints, default=(1, 8, 32), help="clients; default: 1,8,32"
    )
    bench.add_argument("--duration", type=_positive, default=10.0, help="seconds measured")
    bench.add_argument(
        "--warmup", type=float, default=2.0, help="seconds before measuring (excluded)"
    )
    bench.add_argument("--repeat", type=int, default=3, help="repetitions; figures are medians")
    bench.add_argument(
        "--floor-history", type=int, default=20_000, help="rows seeded into the floor's log"
    )
    bench.add_argument("--out", default="bench-results.json", help="JSON results ('' for none)")
    bench.set_defaults(func=_bench)
