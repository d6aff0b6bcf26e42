"""``txn fault``: the client of a running ``txn dev``'s fault tools (txn_devstack.fault_control).

txn fault list                         what each kind can hit
txn fault kill coord1                  SIGKILL (the stack restarts it)
txn fault pause inventory --hold 5     SIGSTOP for 5 s, then SIGCONT
txn fault crash_db payments --hold 3   immediate shutdown, started again after 3 s
txn fault blackhole shipping --hold 10 (needs `txn dev --fault-proxies`)
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from txn_devstack.faults import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["list", *KINDS], help="the fault, or `list`")
    parser.add_argument("target", nargs="?", default="", help="what to hit (see `list`)")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds before it is undone")
    parser.add_argument("--state-dir", default=".txn-dev", help="the `txn dev` state folder")


def _control_url(state_dir: str) -> str:
    path = Path(state_dir) / "stack.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"no running stack at {path} ({e}); start one with `txn dev`") from e
    url = state.get("fault_control")
    if not isinstance(url, str):
        raise SystemExit(f"{path} names no fault tools; restart `txn dev` with this version")
    return url


def _call(url: str, body: dict[str, Any] | None, timeout_s: float) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/faults", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:
        raise SystemExit(f"the fault tools at {url} do not answer ({e}); is `txn dev` up?") from e


def run_fault(args: argparse.Namespace) -> int:
    url = _control_url(args.state_dir)
    if args.kind == "list":
        _, body = _call(url, None, 10)
        for kind, targets in body["kinds"].items():
            print(f"  {kind:<24} {', '.join(targets) or '(needs txn dev --fault-proxies)'}")
        return 0
    if not args.target:
        print(f"`txn fault {args.kind}` needs a target; `txn fault list` shows them")
        return 2
    status, body = _call(
        url, {"kind": args.kind, "target": args.target, "hold_s": args.hold}, args.hold + 120
    )
    if status != 200:
        print(f"refused ({status}): {body.get('detail')}")
        return 2
    detail = f" ({body['detail']})" if body.get("detail") else ""
    print(f"{body['kind']} {body['target']}: done, held {body['hold_s']:.1f}s{detail}")
    return 0
