"""``txn tx``: the operator's command line over the coordinator's REST API.

    txn tx [--url URL] [--token TOKEN] [--stack STACK_JSON] list|show|retry|abort|resolve ...

The coordinator: --url, else the first coordinator of --stack (the stack.json of a `txn dev`),
else $TXN_URL, else http://127.0.0.1:8000. The bearer token: --token, else the stack.json's
api_token, else $TXN_TOKEN (better than --token, which the process list shows). The token is
never printed, nor the user:password@ of a URL. Errors are one line on stderr, starting with
"txn tx:". A token sent over plain http to a host other than this one (127.0.0.0/8, ::1,
localhost) gets a warning first. Output cut short by its reader (`txn tx list | head`) is no error.

exit codes:
  0  done
  1  refused by the coordinator: 404 (no such transaction or branch), 409 (not allowed now),
     any other 4xx not listed below
  2  usage error, or input the coordinator rejects (400, 413, 415, 422)
  3  authentication or authorization failure (401, 403)
  4  coordinator unreachable, busy (429) or failing (5xx), or an answer not understood
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.request import Request

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_AUTH, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
# The epilog of every subcommand (empty under python -OO, which drops docstrings).
EXIT_CODES = "exit codes:" + (__doc__ or "").partition("exit codes:")[2]

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 30.0
MAX_PAGES = 100  # list --all stops there
MAX_NOTE = 1000  # coordinator.models.NoteIn
# participants.sdk.wire.GID_PATTERN (not imported: that package is slow to import).
GID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# participants.sdk.wire.MAX_BRANCHES (not imported, as above): branch indexes are 0..63.
MAX_BRANCHES = 64
REASON_WIDTH, ERROR_WIDTH = 60, 80
# list's filters: query parameters of GET /v1/transactions (older_than: older_than_s).
LIST_QUERY = ("status", "mode", "participant", "gid_prefix", "older_than", "newer_than")
ONE_COMMANDS = (
    ("show", "one transaction, its branches, its timeline"),
    ("retry", "drive a live transaction again now, its backoff cleared (admin)"),
    ("abort", "abort a 2PC before its commit decision, or compensate a running saga (admin)"),
    ("resolve", "declare a compensating saga's branch compensated by hand (admin)"),
)


class TxError(Exception):
    """What ends the command: ``TxError(exit code, one line for stderr)``."""


def exit_code(status: int) -> int:
    """The exit code of an HTTP error answer."""
    known = {401: EXIT_AUTH, 403: EXIT_AUTH, 429: EXIT_UNAVAILABLE}
    known |= dict.fromkeys((400, 413, 415, 422), EXIT_USAGE)
    return known.get(status, EXIT_REFUSED if 400 <= status < 500 else EXIT_UNAVAILABLE)


def detail_text(body: bytes) -> str:
    """An error answer (a problem) as one line; a 422 lists each field at fault."""
    try:
        answer = json.loads(body)
        detail, errors = answer["detail"], answer.get("errors")
    except (ValueError, KeyError, TypeError):
        return clean(body.decode("utf-8", "replace"))[:200] or "(no detail)"
    if isinstance(errors, list) and errors:
        return clean("; ".join(_field_error(e) for e in errors))
    return clean(str(detail))


def _field_error(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(p for p in str(item.get("field", "")).split(".") if p != "body")
    message = str(item.get("message", ""))
    return f"{where}: {message}" if where else message


def clean(text: str) -> str:
    """``text`` without control characters: a participant's error must not drive the terminal."""
    return "".join(c if c.isprintable() else " " for c in text)


def shown_url(url: str) -> str:
    """``url`` fit to print: without the ``user:password@`` of its authority, if any (the
    authority: after ``//``, else from the start, up to the first ``/``, ``?`` or ``#``)."""
    head, sep, rest = url.partition("//")
    if not sep:
        head, rest = "", url
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _host = authority.rpartition("@")
    return clean(head + sep + rest[len(userinfo + at) :])


def plain_http_warning(url: str, token: str | None) -> str | None:
    """The warning when ``token`` would cross the network unencrypted: over plain http to a
    host that is not a loopback one (127.0.0.0/8, ::1, localhost)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not token or parts.scheme != "http" or host == "localhost":
        return None
    with contextlib.suppress(ValueError):  # a name, not an address
        if ipaddress.ip_address(host).is_loopback:
            return None
    return f"warning: sending the token over plain http to {clean(host)}; use https"


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port: the token goes nowhere else."""

    def redirect_request(
        self, req: Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> Request | None:
        if self.origin(newurl) != self.origin(req.full_url):
            fp.close()
            raise TxError(EXIT_UNAVAILABLE, f"not following a redirect ({code}) to another host")
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    @staticmethod
    def origin(url: str) -> tuple[str, str, int | None]:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        return parts.scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class Client:
    """JSON over HTTP to one coordinator, with the bearer token (never in its repr)."""

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout_s: float = TIMEOUT_S

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        given = {k: v for k, v in (query or {}).items() if v is not None}
        return self.call(path + (f"?{urllib.parse.urlencode(given)}" if given else ""))

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET ``path``, or POST ``body`` to it; the answer's JSON, or raise TxError."""
        headers = {"Accept": "application/json", "User-Agent": "txn-tx"}
        headers |= {"Content-Type": "application/json"} if body is not None else {}
        headers |= {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None if body is None else json.dumps(body).encode()
        request = Request(self.base_url.rstrip("/") + path, data, headers)
        opener = urllib.request.build_opener(_SameOriginRedirects)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                answer: bytes = response.read()
        except urllib.error.HTTPError as e:
            try:
                text = self.redact(detail_text(e.read()))
            finally:
                e.close()
            raise TxError(exit_code(e.code), f"{e.code}: {text}") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            why = self.redact(clean(str(getattr(e, "reason", None) or e)))
            where = shown_url(self.base_url)
            raise TxError(EXIT_UNAVAILABLE, f"cannot reach {where}: {why}") from None
        try:
            return json.loads(answer)
        except ValueError:
            raise TxError(EXIT_UNAVAILABLE, "the coordinator's answer is not JSON") from None

    def redact(self, text: str) -> str:
        """``text`` without the token, nor the URL's password (an error may quote the host part:
        urllib takes ``user:password@host`` for the host)."""
        text = text.replace(self.token, "<token>") if self.token else text
        with contextlib.suppress(ValueError):
            if password := urllib.parse.urlsplit(self.base_url).password:
                text = text.replace(password, "<password>")
        return text


def format_age(seconds: float) -> str:
    """5s, 3m, 2h, 4d: the largest whole unit."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def age_of(value: str, now: datetime | None = None) -> str:
    try:
        at = datetime.fromisoformat(value).astimezone(UTC)  # naive: local time
        return format_age(((now or datetime.now(UTC)) - at).total_seconds())
    except (TypeError, ValueError):
        return "?"


def format_time(value: str) -> str:
    try:
        at = datetime.fromisoformat(value).astimezone(UTC)
    except (TypeError, ValueError):
        return clean(str(value))
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else clean(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [list(headers), *[[cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(line.rstrip() for line in lines)


def branches_summary(branches: list[dict[str, Any]]) -> str:
    """How many branches, and how many of them have a last error: ``3 (1 failing)``."""
    failing = sum(1 for b in branches if b.get("last_error"))
    return f"{len(branches)} ({failing} failing)" if failing else str(len(branches))


def list_table(items: list[dict[str, Any]], now: datetime | None = None) -> str:
    def row(t: dict[str, Any]) -> list[Any]:
        age, reason = age_of(t["created_at"], now), clean(t.get("reason") or "")
        summary = branches_summary(t["branches"])
        return [t["gid"], t["mode"], t["status"], age, summary, truncate(reason, REASON_WIDTH)]

    headers = ["GID", "MODE", "STATUS", "AGE", "BRANCHES", "REASON"]
    return table(headers, [row(t) for t in items])


def _branch_row(b: dict[str, Any]) -> list[Any]:
    error = truncate(clean(b.get("last_error") or ""), ERROR_WIDTH)
    fixed = [b["idx"], b["participant"], b["action"], b["status"], b["attempts"]]
    return [*fixed, error, b.get("resolved_by")]


def _event_row(e: dict[str, Any]) -> list[Any]:
    detail = e.get("detail")
    compact = None if detail is None else json.dumps(detail, separators=(",", ":"))
    return [format_time(e["at"]), e["kind"], e.get("branch"), compact]


def show_text(txn: dict[str, Any], now: datetime | None = None) -> str:
    def when(key: str) -> str:
        return f"{format_time(txn[key])} ({age_of(txn[key], now)} ago)"

    lines = [f"{k + ':':<9} {cell(txn.get(k))}" for k in ("gid", "mode", "status", "reason")]
    lines += [f"created:  {when('created_at')}", f"updated:  {when('updated_at')}"]
    headers = ["IDX", "PARTICIPANT", "ACTION", "STATUS", "ATTEMPTS", "LAST ERROR", "RESOLVED BY"]
    lines += ["", "branches:", table(headers, [_branch_row(b) for b in txn["branches"]])]
    events = txn.get("events")
    timeline = ["AT", "KIND", "BRANCH", "DETAIL"]
    shown = "(not included)" if events is None else table(timeline, [_event_row(e) for e in events])
    return "\n".join([*lines, "", "timeline:", shown])


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    query = {k + "_s" * k.endswith("_than"): getattr(args, k) for k in LIST_QUERY}
    query.update(limit=args.limit, cursor=args.cursor)
    page = client.get("/v1/transactions", query)
    items: list[dict[str, Any]] = list(page["items"])
    pages = 1
    while args.all and page.get("next_cursor") and pages < MAX_PAGES:
        page = client.get("/v1/transactions", {**query, "cursor": page["next_cursor"]})
        items += page["items"]
        pages += 1
    cursor = page.get("next_cursor")
    if args.all and cursor:
        print(f"txn tx: stopped after {MAX_PAGES} pages", file=sys.stderr)
    if args.json:
        print(json.dumps({"items": items, "next_cursor": cursor}, indent=2))
        return EXIT_OK
    print(list_table(items) if items else "no transactions")
    if cursor:
        print(f"next: {cursor}")
    return EXIT_OK


def cmd_one(client: Client, args: argparse.Namespace) -> int:
    """show: GET the transaction; retry, abort, resolve: POST the action with the note."""
    verb, path = args.tx_command, "/v1/transactions/" + urllib.parse.quote(args.gid, safe="")
    action = f"/branches/{args.idx}/resolve" if verb == "resolve" else f"/{verb}"
    note = None if verb == "show" else {"note": args.note}
    txn = client.call(path if note is None else path + action, note)
    if args.json:
        print(json.dumps(txn, indent=2))
    elif verb == "show":
        print(show_text(txn))
    else:
        print(outcome(verb, txn, getattr(args, "idx", None)))
    return EXIT_OK


def outcome(verb: str, txn: dict[str, Any], idx: int | None = None) -> str:
    """What an action did: ``abort: <gid> is now aborting``."""
    line = f"{verb}: {cell(txn['gid'])} is now {cell(txn['status'])}"
    for b in txn["branches"] if idx is not None else []:
        if b["idx"] == idx:
            by = cell(b.get("resolved_by"))
            return f"{line}; branch {idx} is {cell(b['status'])}, resolved by {by}"
    return line


def target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(coordinator URL, token) from the flags, the stack file, the environment."""
    url, token = args.url, args.token
    if args.stack:
        try:
            state = json.loads(Path(args.stack).read_text())
            url = url or str(state["coordinators"][0]["url"])
            token = token or str(state.get("api_token") or "")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            why = f"not a txn dev stack.json ({type(e).__name__}: {e})"
            raise TxError(EXIT_USAGE, f"--stack {args.stack}: {why}") from None
    url = url or os.environ.get("TXN_URL") or DEFAULT_URL
    token = token or os.environ.get("TXN_TOKEN") or None
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # the port is not a number, or out of range
        valid = False
    if not valid:
        why = f"the coordinator URL must be http(s)://host[:port], not {shown_url(url)}"
        raise TxError(EXIT_USAGE, why)
    return url, token


def run(args: argparse.Namespace) -> int:
    """``txn tx``: the subcommand, its errors as one line and an exit code."""
    try:
        url, token = target(args)
        if warning := plain_http_warning(url, token):
            print(f"txn tx: {warning}", file=sys.stderr)
        code = int(args.tx_func(Client(url, token), args))
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader of the output stopped early (`txn tx list | head`). The command did its
        # work (an action was done, a list was fetched) and the reader has all it wanted: exit
        # 0, quietly, like the shell tools do in a pipeline. The HTTP calls catch their own
        # OSErrors, so this one is from writing the output.
        _stdout_to_devnull()
        return EXIT_OK
    except TxError as e:
        code, message = e.args
        print(f"txn tx: {message}", file=sys.stderr)
        return int(code)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        print(f"txn tx: an answer not understood ({type(e).__name__}: {e})", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _stdout_to_devnull() -> None:
    """Point the stdout file descriptor at devnull, as Python's docs advise for SIGPIPE: what is
    written or left buffered after, flushed at the interpreter's exit at the latest, would meet
    the closed pipe again (another BrokenPipeError, "Exception ignored ...", exit code 120)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured, replaced)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _checked(check: Callable[[str], Any], why: str) -> Callable[[str], Any]:
    """An argparse type: ``check(value)``, a usage error saying ``why`` when it is None."""

    def parse(value: str) -> Any:
        with contextlib.suppress(ValueError):
            if (out := check(value)) is not None:
                return out
        raise argparse.ArgumentTypeError(why)

    return parse


def _in_range(cast: Callable[[str], float], lo: float, hi: float) -> Callable[[str], Any]:
    return lambda value: n if lo <= (n := cast(value)) <= hi else None  # None: out of range


_gid = _checked(
    lambda v: v if GID_PATTERN.match(v) else None,
    "a gid is 1-128 of [A-Za-z0-9._:-], a letter or digit first",
)
_note = _checked(
    lambda v: v if 0 < len(v.strip()) <= MAX_NOTE else None,
    f"say why in 1-{MAX_NOTE} characters: the note is kept in the transaction's timeline",
)
_seconds = _checked(_in_range(float, 0, 10**9), "seconds, between 0 and 1e9")
_limit = _checked(_in_range(int, 1, 500), "an integer between 1 and 500")
_index = _checked(
    _in_range(int, 0, MAX_BRANCHES - 1),
    f"a branch index: an integer from 0 to {MAX_BRANCHES - 1}",
)


def _subcommand(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(tx_func=cmd_list if name == "list" else cmd_one)
    if name == "list":
        return p
    p.add_argument("gid", type=_gid, help="the transaction's gid")
    if name == "resolve":
        p.add_argument("idx", type=_index, help="the branch's index")
    if name != "show":
        p.add_argument("--note", required=True, type=_note, help="why (kept in the timeline)")
    p.add_argument("--json", action="store_true", help="print the transaction as JSON")
    return p


def add_parser(sub: Any) -> None:
    """Register ``txn tx`` on the ``txn`` command's subparsers."""
    tx: argparse.ArgumentParser = sub.add_parser(
        "tx",
        help="list, show, retry, abort, resolve transactions (the REST API, with a token)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tx.add_argument("--url", default="", help=f"coordinator URL ($TXN_URL, else {DEFAULT_URL})")
    tx.add_argument("--token", default="", help="bearer token (better: $TXN_TOKEN)")
    tx.add_argument(
        "--stack",
        default="",
        metavar="STACK_JSON",
        help="stack.json of a `txn dev`: its URL and token",
    )
    tx.set_defaults(func=run)
    commands = tx.add_subparsers(dest="tx_command", required=True, metavar="COMMAND")

    ls = _subcommand(commands, "list", "list transactions, newest first")
    ls.add_argument("--status", help="preparing, committing, committed, aborting, aborted, ...")
    ls.add_argument("--mode", choices=("2pc", "saga", "tcc"), help="only this mode")
    ls.add_argument("--participant", help="only those with a branch on it")
    ls.add_argument("--gid-prefix", help="only gids that start with it")
    ls.add_argument("--older-than", type=_seconds, help="created at least this many seconds ago")
    ls.add_argument("--newer-than", type=_seconds, help="created at most this many seconds ago")
    ls.add_argument("--limit", type=_limit, default=50, help="per page, 1-500 (default 50)")
    ls.add_argument("--cursor", help="the page after this one (a `next:` of an earlier list)")
    ls.add_argument("--all", action="store_true", help=f"every page (at most {MAX_PAGES})")
    ls.add_argument("--json", action="store_true", help="print the answer as JSON")

    for name, help_text in ONE_COMMANDS:
        _subcommand(commands, name, help_text)
