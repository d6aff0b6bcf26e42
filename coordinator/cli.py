"""txn: run, try, operate and measure the distributed transaction coordinator (one line
per command below; txn COMMAND --help for its options)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from coordinator.errors import LOG_ERRORS, briefly
from migrations import TARGETS
from txn_devstack.ha import INSTALL_HINT
from txn_devstack.postgres import PostgresNotFound

# What a one-shot command meets when its database is down, refuses it, or is not there.
DATABASE_UNREACHABLE: tuple[type[BaseException], ...] = (*LOG_ERRORS, TimeoutError)


def _dev(args: argparse.Namespace) -> int:
    from txn_devstack.fault_control import FaultControl
    from txn_devstack.faults import Injector
    from txn_devstack.stack import Stack, StackConfig

    stack = Stack(
        StackConfig(
            state_dir=Path(args.state_dir),
            coordinators=args.coordinators,
            ledgers=args.ledgers,
            shop=not args.no_shop,
            fsync=not args.no_fsync,
            fault_proxies=args.fault_proxies,
            log_ha=args.log_ha,
            participant_ha=tuple(args.participant_ha),
        )
    )
    control = FaultControl(Injector(stack))
    # A plain flag, not a threading.Event: the handler runs in the main thread between any two
    # bytecodes, possibly while that thread holds the Event's lock inside wait(), and
    # Event.set() would then deadlock on it.
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack.start()
    try:
        control.start()
        stack.extra_state["fault_control"] = control.url
        stack.write_state()
        state_file = Path(args.state_dir).resolve() / "stack.json"
        print(f"dev stack up; state in {state_file}", flush=True)
        print(
            "  every API needs the admin token stored there: "
            "Authorization: Bearer <stack.json's api_token>",
            flush=True,
        )
        for c in stack.coordinators:
            print(f"  coordinator {c.name}: {c.url}  (OpenAPI: {c.url}/docs)", flush=True)
        print(
            f"  console: {stack.coordinators[0].url}/console  (sign in with the api_token "
            "of stack.json)",
            flush=True,
        )
        for p in stack.participants:
            print(f"  participant {p.name}: {p.url}", flush=True)
        print(f"  fault tools: {control.url}/faults  (`txn fault --help`)", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        while not stop_requested:
            time.sleep(0.2)
    finally:
        print("stopping the dev stack...", flush=True)
        control.stop()
        stack.stop()
    return 0


def _in_state_dir(state_dir: str, run: Callable[[Path], int]) -> int:
    if state_dir:
        return run(Path(state_dir))
    with tempfile.TemporaryDirectory(prefix="txn-demo-") as tmp:
        # Postgres runs as an unprivileged user when we are root: let it into the folder.
        Path(tmp).chmod(0o755)
        return run(Path(tmp))


def _demo(args: argparse.Namespace) -> int:
    from txn_devstack.shop_demo import run_demo

    if args.against:
        return run_demo(None, Path(args.against), args.orders, args.concurrency, args.seed)
    return _in_state_dir(
        args.state_dir,
        lambda d: run_demo(d, None, args.orders, args.concurrency, args.seed),
    )


def _demo_transfers(args: argparse.Namespace) -> int:
    from txn_devstack.demo import run_demo

    return _in_state_dir(args.state_dir, run_demo)


def _migrate(args: argparse.Namespace) -> int:
    from migrations import upgrade
    from participants.sdk.db import redacted

    upgrade(args.dsn, args.target)
    print(f"{args.target} schema at head on {redacted(args.dsn)}")
    return 0


def _chaos(args: argparse.Namespace) -> int:
    from txn_devstack.chaos import ChaosConfig, report, run_chaos, write_json
    from txn_devstack.faults import KINDS

    kinds = tuple(k for k in args.kinds.split(",") if k) if args.kinds else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"unknown fault kinds: {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
        return 2

    def run(state_dir: Path) -> int:
        config = ChaosConfig(
            state_dir=state_dir,
            seed=args.seed,
            duration_s=args.duration,
            concurrency=args.concurrency,
            kinds=kinds,
            log_ha=args.log_ha,
        )
        result = run_chaos(config)
        print(report(result), flush=True)
        if args.json:
            write_json(result, Path(args.json))
        return 0 if result.ok else 1

    return _in_state_dir(args.state_dir, run)


def _fault(args: argparse.Namespace) -> int:
    from txn_devstack.fault_cli import run_fault

    return run_fault(args)


def _token(args: argparse.Namespace) -> int:
    import json

    from participants.sdk.tokens import SCOPES, new_token, token_entry

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        print(f"txn token: --scopes must be a comma-separated subset of {','.join(SCOPES)}")
        return 2
    token = new_token()
    # The token is shown once, to whoever asked for it; the server keeps only its hash.
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print("entry for TXN_API_TOKENS / TXNP_API_TOKENS (a JSON list of such entries):")
    print(json.dumps(token_entry(args.name, token, scopes)))
    return 0


def _retention(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from pydantic import TypeAdapter, ValidationError

    from coordinator.pglog import PgLog
    from coordinator.retention import purge_in_batches
    from participants.sdk.db import redacted

    dsn = args.dsn or os.environ.get("TXN_LOG_DSN", "")
    if not dsn:
        print("txn retention: give --dsn or set TXN_LOG_DSN", file=sys.stderr)
        return 2
    try:
        try:
            older = float(args.older_than)
        except ValueError:
            older = TypeAdapter(timedelta).validate_python(args.older_than).total_seconds()
    except ValidationError:
        print("txn retention: --older-than is seconds or ISO 8601 (P7D)", file=sys.stderr)
        return 2
    if older <= 0:
        print("txn retention: --older-than must be positive", file=sys.stderr)
        return 2

    async def run() -> int:
        store = PgLog.connect(dsn, pool_size=2)
        try:
            if args.dry_run:
                return await store.purge(older, args.batch, dry_run=True)
            return await purge_in_batches(store, older, args.batch)
        finally:
            await store.close()

    count = asyncio.run(run())
    what = "would delete" if args.dry_run else "deleted"
    print(f"{what} {count} finished transactions older than {args.older_than} ({redacted(dsn)})")
    return 0


def _serve(_args: argparse.Namespace) -> int:
    from coordinator.__main__ import main as serve

    serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given == ["serve"]:
        # What compose and Kubernetes run, on every start: straight to the service, without
        # building the whole parser (it imports the bench and fault tools).
        args = argparse.Namespace(command="serve", func=_serve)
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
    except ValidationError as e:
        # Where and what only: pydantic's own text echoes the input, which may be a secret.
        for error in e.errors():
            where = "_".join(str(part) for part in error["loc"][:1]).upper()
            print(f"txn {args.command}: setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    except DATABASE_UNREACHABLE as e:
        print(f"txn {args.command}: the database cannot be used: {briefly(e)}", file=sys.stderr)
        return 2
    except PostgresNotFound as e:
        print(f"txn {args.command}: {e}", file=sys.stderr)
        return 2
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txn",
        description=__doc__,
        epilog="Settings come from TXN_* / TXNP_* variables (docs/configuration.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run the embedded dev stack in the foreground")
    dev.add_argument("--state-dir", default=".txn-dev", help="where data, logs, stack.json go")
    dev.add_argument(
        "--coordinators",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="coordinator instances sharing the log (1-8; default 1)",
    )
    dev.add_argument(
        "--ledgers",
        type=int,
        default=3,
        choices=range(1, 17),
        metavar="N",
        help="ledger services (1-16; default 3)",
    )
    dev.add_argument("--no-fsync", action="store_true", help="faster, not crash-safe for the OS")
    dev.add_argument("--no-shop", action="store_true", help="without the demo shop's services")
    dev.add_argument(
        "--fault-proxies",
        action="store_true",
        help="a fault proxy in front of every participant service and database (txn fault)",
    )
    dev.add_argument(
        "--log-ha",
        action="store_true",
        help="the log on three Postgres nodes under Patroni with etcd, synchronous "
        f"replication ({INSTALL_HINT})",
    )
    dev.add_argument(
        "--participant-ha",
        action="append",
        default=[],
        metavar="NAME",
        help="the same for this participant's database (repeatable)",
    )
    dev.set_defaults(func=_dev)

    demo = sub.add_parser("demo", help="the shop: place orders in both modes, check invariants")
    demo.add_argument("--state-dir", default="", help="keep the stack's data here (default: temp)")
    demo.add_argument("--against", default="", help="stack.json of a running `txn dev`")
    demo.add_argument("--orders", type=int, default=300, help="how many orders to place")
    demo.add_argument("--concurrency", type=int, default=16, help="orders in flight at once")
    demo.add_argument("--seed", type=int, default=7, help="seed of the order mix")
    demo.set_defaults(func=_demo)

    transfers = sub.add_parser(
        "demo-transfers", help="3 ledgers: one committed and one aborted 2PC transfer"
    )
    transfers.add_argument("--state-dir", default="", help="keep the data here (default: temp)")
    transfers.set_defaults(func=_demo_transfers)

    migrate = sub.add_parser("migrate", help="apply migrations to a database")
    migrate.add_argument("--dsn", required=True, help="the database to migrate (a Postgres DSN)")
    migrate.add_argument(
        "--target",
        default="coordinator",
        choices=list(TARGETS),
        help="whose schema: the coordinator's log or a demo service's (default: coordinator)",
    )
    migrate.set_defaults(func=_migrate)

    token = sub.add_parser(
        "token",
        help="make an API token: prints it once, and the hashed entry the servers keep",
    )
    token.add_argument("--name", required=True, help="who holds it (shown in refusals, logs)")
    token.add_argument(
        "--scopes", default="submit,read", help="comma-separated: submit, read, admin, metrics"
    )
    token.set_defaults(func=_token)

    retention = sub.add_parser(
        "retention",
        help="delete finished transactions past the retention from the log (what every "
        "coordinator does every TXN_RETENTION_INTERVAL_S)",
    )
    retention.add_argument("--dsn", default="", help="the log's DSN (default: $TXN_LOG_DSN)")
    retention.add_argument(
        "--older-than", default="P7D", help="seconds or ISO 8601 (default P7D: 7 days)"
    )
    retention.add_argument("--batch", type=int, default=1000, help="rows per statement")
    retention.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    retention.set_defaults(func=_retention)

    serve = sub.add_parser("serve", help="run one coordinator (settings from TXN_* variables)")
    serve.set_defaults(func=_serve)

    chaos = sub.add_parser(
        "chaos", help="the shop's load in both modes under random faults, then the invariants"
    )
    chaos.add_argument("--seed", type=int, default=1, help="fixes the orders and the faults")
    chaos.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    chaos.add_argument("--concurrency", type=int, default=8, help="orders in flight at once")
    chaos.add_argument("--kinds", default="", help="comma-separated fault kinds (default: all)")
    chaos.add_argument("--state-dir", default="", help="keep the stack's data here (default: temp)")
    chaos.add_argument("--json", default="", help="also write the results to this file")
    chaos.add_argument(
        "--log-ha",
        action="store_true",
        help="the log on three nodes under Patroni; adds kill_log_primary and log_switchover "
        f"to the faults drawn ({INSTALL_HINT})",
    )
    chaos.set_defaults(func=_chaos)

    from txn_devstack.fault_cli import add_arguments as add_fault_arguments

    fault = sub.add_parser(
        "fault",
        help="inject one fault into a running `txn dev` (list: what can be hit)",
        description="Inject a fault into a running `txn dev`, hold it, undo it.",
    )
    add_fault_arguments(fault)
    fault.set_defaults(func=_fault)

    from txn_bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)

    from coordinator.txcli import add_parser as add_tx_parser

    add_tx_parser(sub)

    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("txn-coordinator")
    except PackageNotFoundError:
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
