"""``txn tx``: the operator's command line. Pure: the tables, ages, exit codes and arguments,
and the HTTP side against a tiny canned server on 127.0.0.1 (status code -> exit code, the
token sent and never printed, redirects to another host not followed)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from coordinator import txcli
from coordinator.cli import main
from participants.sdk import wire

TOKEN = "txn_unit-test-token-do-not-print-0123456789"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def iso(ago_s: float) -> str:
    return (NOW - timedelta(seconds=ago_s)).isoformat()


def branch(idx: int, **over: Any) -> dict[str, Any]:
    return {
        "idx": idx,
        "depends_on": None,
        "participant": f"ledger{idx + 1}",
        "action": "/accounts/adjust",
        "compensation": "/accounts/adjust/undo",
        "status": "succeeded",
        "attempts": 1,
        "last_error": None,
        "resolved_by": None,
        **over,
    }


def txn(gid: str = "g-1", **over: Any) -> dict[str, Any]:
    return {
        "gid": gid,
        "mode": "saga",
        "status": "committed",
        "reason": None,
        "created_at": iso(300),
        "updated_at": iso(299),
        "branches": [branch(0), branch(1)],
        "events": None,
        **over,
    }


# -- formatting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        *[(0, "0s"), (5.9, "5s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h")],
        *[(86_399, "23h"), (86_400, "1d"), (10 * 86_400, "10d"), (-3, "0s")],
    ],
)
def test_age_is_the_largest_whole_unit(seconds: float, shown: str) -> None:
    assert txcli.format_age(seconds) == shown


def test_age_of_a_timestamp() -> None:
    assert txcli.age_of(iso(7200), NOW) == "2h"
    assert txcli.age_of("2024-05-01T11:59:55Z", NOW) == "5s"
    assert txcli.age_of("not a time", NOW) == "?"


def test_table_pads_columns_and_shows_missing_values_as_dashes() -> None:
    out = txcli.table(["A", "LONGER"], [["xyz", None], [1, "v"]])
    assert out.splitlines() == ["A    LONGER", "xyz  -", "1    v"]


def test_list_table() -> None:
    failing = [branch(0), branch(1, status="compensating", last_error="HTTP 503"), branch(2)]
    items = [
        txn("g-1", created_at=iso(5)),
        txn("g-22", mode="2pc", status="aborted", reason="x" * 200, created_at=iso(7300)),
        txn("g-3", status="compensating", branches=failing, created_at=iso(190)),
    ]
    lines = txcli.list_table(items, NOW).splitlines()
    assert lines[0].split() == ["GID", "MODE", "STATUS", "AGE", "BRANCHES", "REASON"]
    assert lines[1].split() == ["g-1", "saga", "committed", "5s", "2", "-"]
    assert lines[2].split() == ["g-22", "2pc", "aborted", "2h", "2", "x" * 57 + "..."]
    assert lines[3].split()[:6] == ["g-3", "saga", "compensating", "3m", "3", "(1"]
    assert "3 (1 failing)" in lines[3]
    column = lines[0].index("MODE")
    assert [line[column:].split()[0] for line in lines] == ["MODE", "saga", "2pc", "saga"]


def test_show_text_has_the_header_branches_and_timeline() -> None:
    events = [
        {"at": iso(300), "kind": "created", "branch": None, "detail": {"mode": "saga"}},
        {"at": iso(299), "kind": "action:failed", "branch": 1, "detail": {"error": "boom"}},
    ]
    resolved = branch(1, status="compensated", last_error="undo failed", resolved_by="ops")
    text = txcli.show_text(txn(events=events, branches=[branch(0), resolved]), NOW)
    assert "gid:      g-1" in text
    assert "status:   committed" in text
    assert "reason:   -" in text
    assert "created:  2024-05-01 11:55:00.000Z (5m ago)" in text
    header = next(line for line in text.splitlines() if line.startswith("IDX"))
    assert header.split("  ")[0] == "IDX"
    for column in ("PARTICIPANT", "ACTION", "STATUS", "ATTEMPTS", "LAST ERROR", "RESOLVED BY"):
        assert column in header
    row = next(line for line in text.splitlines() if line.startswith("1 "))
    assert row.split()[:4] == ["1", "ledger2", "/accounts/adjust", "compensated"]
    assert row.endswith("undo failed  ops")
    assert "AT" + " " * 24 + "KIND" in text  # the time is 24 characters wide
    assert '2024-05-01 11:55:01.000Z  action:failed  1       {"error":"boom"}' in text
    assert txcli.show_text(txn(), NOW).endswith("timeline:\n(not included)")


def test_server_text_cannot_drive_the_terminal() -> None:
    hostile = branch(0, last_error="\x1b[2J\x1b]0;pwned\x07line\nbreak")
    text = txcli.show_text(txn(branches=[hostile], reason="a\rb"), NOW)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "line break" in text
    assert txcli.detail_text(b'{"detail": "no\\u001b[31m red"}') == "no [31m red"


def test_detail_text() -> None:
    assert txcli.detail_text(b'{"detail": "transaction g is committed"}') == (
        "transaction g is committed"
    )
    problems = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "body.note: String should have at least 1 character (and 1 more)",
        "errors": [
            {"field": "body.note", "message": "String should have at least 1 character"},
            {"field": "query.limit", "message": "too big"},
        ],
    }
    assert txcli.detail_text(json.dumps(problems).encode()) == (
        "note: String should have at least 1 character; query.limit: too big"
    )
    assert txcli.detail_text(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert txcli.detail_text(b"") == "(no detail)"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        *[(404, 1), (409, 1), (405, 1), (408, 1), (410, 1), (451, 1)],
        *[(400, 2), (413, 2), (415, 2), (422, 2)],
        *[(401, 3), (403, 3), (429, 4), (500, 4), (502, 4), (503, 4), (307, 4)],
    ],
)
def test_exit_code_of_each_status(status: int, code: int) -> None:
    assert txcli.exit_code(status) == code


def test_exit_codes_are_documented() -> None:
    assert txcli.__doc__ is not None
    for line in ("0  done", "1  refused", "2  usage", "3  authentication", "4  coordinator"):
        assert line in txcli.EXIT_CODES
        assert line in txcli.__doc__


def test_every_other_4xx_is_documented_as_refused() -> None:
    refused = (
        "1 refused by the coordinator: 404 (no such transaction or branch), "
        "409 (not allowed now), any other 4xx not listed below"
    )
    assert txcli.__doc__ is not None
    assert refused in " ".join(txcli.__doc__.split())
    assert refused in " ".join(txcli.EXIT_CODES.split())
    # "below": the statuses given the other codes are all listed after it.
    below = txcli.EXIT_CODES.partition("not listed below")[2]
    for status in (400, 401, 403, 413, 415, 422, 429):
        assert txcli.exit_code(status) != txcli.EXIT_REFUSED and str(status) in below


def test_gid_pattern_is_the_wire_one() -> None:
    assert txcli.GID_PATTERN.pattern == wire.GID_PATTERN.pattern


def test_branch_indexes_are_the_wire_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert txcli.MAX_BRANCHES == wire.MAX_BRANCHES
    assert txcli._index("0") == 0 and txcli._index("63") == 63
    for bad in ("64", "1000000", "-1", "1.5"):
        with pytest.raises(SystemExit) as exited:
            main(["tx", "resolve", "g-1", bad, "--note", "x"])
        assert exited.value.code == 2
        assert "a branch index: an integer from 0 to 63" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ops:s3cret@h:8000/x", "http://h:8000/x"),
        ("https://ops@h", "https://h"),
        ("http://a@b:c@h:1?q=x@y", "http://h:1?q=x@y"),  # the last @ of the authority
        ("http://h:8000/a@b", "http://h:8000/a@b"),  # an @ in the path is no user info
        ("ops:s3cret@h:8000", "h:8000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://h\x1b[2J", "http://h [2J"),
    ],
)
def test_urls_are_shown_without_user_info(url: str, shown: str) -> None:
    assert txcli.shown_url(url) == shown


@pytest.mark.parametrize(
    ("url", "token", "warned"),
    [
        ("http://coordinator.example:8000", TOKEN, "coordinator.example"),
        ("http://10.0.0.7:8000", TOKEN, "10.0.0.7"),
        ("http://[2001:db8::1]:8000", TOKEN, "2001:db8::1"),
        ("http://ops:pw@db.example", TOKEN, "db.example"),
        ("https://coordinator.example", TOKEN, None),
        ("http://coordinator.example", None, None),
        ("http://127.0.0.1:8000", TOKEN, None),
        ("http://127.3.2.1:8000", TOKEN, None),
        ("http://[::1]:8000", TOKEN, None),
        ("http://localhost:8000", TOKEN, None),
        ("http://LocalHost", TOKEN, None),
    ],
)
def test_a_token_over_plain_http_off_this_host_is_warned_about(
    url: str, token: str | None, warned: str | None
) -> None:
    expected = f"warning: sending the token over plain http to {warned}; use https"
    assert txcli.plain_http_warning(url, token) == (expected if warned else None)


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["tx", "retry", "g-1"],
        ["tx", "abort", "g-1"],
        ["tx", "resolve", "g-1", "0"],
        ["tx", "abort", "g-1", "--note", "   "],
        ["tx", "abort", "g-1", "--note", "x" * 1001],
        ["tx", "resolve", "g-1", "-1", "--note", "x"],
        ["tx", "resolve", "g-1", "one", "--note", "x"],
        ["tx", "show", "a/b"],
        ["tx", "show", "-starts-with-dash"],
        ["tx", "show", "x" * 129],
        ["tx", "list", "--limit", "0"],
        ["tx", "list", "--limit", "501"],
        ["tx", "list", "--older-than", "-1"],
        ["tx", "list", "--older-than", "nan"],
        ["tx", "list", "--mode", "xa"],
        ["tx"],
        ["tx", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_shows_the_exit_codes_and_never_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXN_TOKEN", TOKEN)
    for argv in (["tx", "--help"], ["tx", "abort", "--help"], ["tx", "list", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit codes:" in out and "3  authentication" in out
        assert TOKEN not in out


def test_a_bad_url_is_shown_without_user_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tx", "--url", "ftp://ops:s3cret@h", "--token", TOKEN, "list"]) == 2
    err = capsys.readouterr().err
    assert err == "txn tx: the coordinator URL must be http(s)://host[:port], not ftp://h\n"


def test_client_repr_hides_the_token() -> None:
    assert TOKEN not in repr(txcli.Client("http://127.0.0.1:1", TOKEN))


# -- against a canned server ---------------------------------------------------------------


@dataclass
class Canned:
    """Answers (status, body, headers) by request path; records what was asked."""

    answers: dict[str, tuple[int, Any, dict[str, str]]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, status: int, body: Any, **headers: str) -> None:
        self.answers[path] = (status, body, headers)


@pytest.fixture
def served() -> Iterator[Canned]:
    yield from _serve()


@pytest.fixture
def other() -> Iterator[Canned]:
    yield from _serve()


def _serve() -> Iterator[Canned]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            canned.seen.append((self.command, self.path, dict(self.headers), body))
            status, answer, headers = canned.answers.get(
                self.path, (404, {"detail": f"nothing canned for {self.path}"}, {})
            )
            raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = reply

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    canned.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield canned
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def tx(canned: Canned, *argv: str, token: str | None = TOKEN) -> int:
    auth = ["--token", token] if token else []
    return main(["tx", "--url", canned.url, *auth, *argv])


@pytest.mark.parametrize(
    ("status", "code"),
    [
        *[(200, 0), (404, 1), (409, 1), (422, 2), (415, 2), (401, 3), (403, 3)],
        *[(429, 4), (500, 4), (503, 4)],
    ],
)
def test_status_to_exit_code(
    served: Canned, capsys: pytest.CaptureFixture[str], status: int, code: int
) -> None:
    body = txn(status="aborting") if status == 200 else {"detail": f"because {status}"}
    served.answer("/v1/transactions/g-1/abort", status, body)
    assert tx(served, "abort", "g-1", "--note", "stuck since noon") == code
    out, err = capsys.readouterr()
    if status == 200:
        assert out == "abort: g-1 is now aborting\n" and err == ""
    else:
        assert out == ""
        assert err == f"txn tx: {status}: because {status}\n"
    method, _path, headers, sent = served.seen[0]
    assert method == "POST"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent) == {"note": "stuck since noon"}


def test_422_lists_the_problems(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    field = {"field": "body.note", "message": "a note is required: say why", "type": "x"}
    problem = {"status": 422, "detail": "body.note: a note is required", "errors": [field]}
    served.answer("/v1/transactions/g-1/retry", 422, problem)
    assert tx(served, "retry", "g-1", "--note", "x") == 2
    assert capsys.readouterr().err == "txn tx: 422: note: a note is required: say why\n"


def test_the_token_is_never_printed(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    served.answer("/v1/transactions/g-1", 401, {"detail": f"unknown token {TOKEN}"})
    assert tx(served, "show", "g-1") == 3
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert err == "txn tx: 401: unknown token <token>\n"


def test_without_a_token_no_authorization_is_sent(
    served: Canned, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TXN_TOKEN", raising=False)
    served.answer("/v1/transactions/g-1", 401, {"detail": "missing credentials"})
    assert tx(served, "show", "g-1", token=None) == 3
    assert "Authorization" not in served.seen[0][2]


def test_environment_gives_url_and_token(
    served: Canned, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXN_URL", served.url)
    monkeypatch.setenv("TXN_TOKEN", TOKEN)
    served.answer("/v1/transactions/g-1", 200, txn())
    assert main(["tx", "show", "g-1"]) == 0
    assert served.seen[0][2]["Authorization"] == f"Bearer {TOKEN}"
    assert "gid:      g-1" in capsys.readouterr().out


def test_stack_file_gives_url_and_token(
    served: Canned, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"coordinators": [{"name": "c1", "url": served.url, "pid": 1}], "api_token": TOKEN}
    (tmp_path / "stack.json").write_text(json.dumps(state))
    served.answer("/v1/transactions?limit=50", 200, {"items": [], "next_cursor": None})
    assert main(["tx", "--stack", str(tmp_path / "stack.json"), "list"]) == 0
    assert served.seen[0][2]["Authorization"] == f"Bearer {TOKEN}"
    assert capsys.readouterr().out == "no transactions\n"
    (tmp_path / "bad.json").write_text("{}")
    assert main(["tx", "--stack", str(tmp_path / "bad.json"), "list"]) == 2
    assert capsys.readouterr().err.startswith(f"txn tx: --stack {tmp_path / 'bad.json'}: not a")


def test_list_passes_the_filters_and_prints_the_next_cursor(
    served: Canned, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "status=aborted&mode=2pc&gid_prefix=order-&older_than_s=60.0&limit=2"
    page = {"items": [txn("order-1"), txn("order-2")], "next_cursor": "abc"}
    served.answer(f"/v1/transactions?{query}", 200, page)
    argv = ["--status", "aborted", "--mode", "2pc", "--gid-prefix", "order-", "--older-than", "60"]
    assert tx(served, "list", *argv, "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["GID", "order-1", "order-2", "next:"]
    assert lines[-1] == "next: abc"


def test_list_all_follows_the_cursor(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    served.answer("/v1/transactions?limit=1", 200, {"items": [txn("a")], "next_cursor": "c1"})
    served.answer(
        "/v1/transactions?limit=1&cursor=c1", 200, {"items": [txn("b")], "next_cursor": None}
    )
    assert tx(served, "list", "--limit", "1", "--all", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert [t["gid"] for t in answer["items"]] == ["a", "b"]
    assert answer["next_cursor"] is None


def test_list_all_is_bounded(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    served.answer("/v1/transactions?limit=1", 200, {"items": [txn("a")], "next_cursor": "c"})
    served.answer("/v1/transactions?limit=1&cursor=c", 200, {"items": [], "next_cursor": "c"})
    assert tx(served, "list", "--limit", "1", "--all") == 0
    out, err = capsys.readouterr()
    assert len(served.seen) == txcli.MAX_PAGES
    assert "stopped after" in err and out.endswith("next: c\n")


def test_resolve_says_the_branch(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    done = branch(1, status="compensated", resolved_by="ops")
    served.answer(
        "/v1/transactions/g-1/branches/1/resolve",
        200,
        txn(status="compensating", branches=[branch(0), done]),
    )
    assert tx(served, "resolve", "g-1", "1", "--note", "fixed by hand") == 0
    assert capsys.readouterr().out == (
        "resolve: g-1 is now compensating; branch 1 is compensated, resolved by ops\n"
    )


def test_answers_not_understood_exit_4(served: Canned, capsys: pytest.CaptureFixture[str]) -> None:
    served.answer("/v1/transactions/g-1", 200, b"<html>hello</html>")
    assert tx(served, "show", "g-1") == 4
    served.answer("/v1/transactions/g-2", 200, {"gid": "g-2"})
    assert tx(served, "show", "g-2") == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "txn tx: the coordinator's answer is not JSON"
    assert err[1].startswith("txn tx: an answer not understood (KeyError")


def test_unreachable_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it
    assert main(["tx", "--url", f"http://127.0.0.1:{port}", "--token", TOKEN, "list"]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"txn tx: cannot reach http://127.0.0.1:{port}: ") and TOKEN not in err


@pytest.mark.parametrize("port", [":1", ""])
def test_unreachable_shows_no_user_info(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    # urllib takes "ops:s3cret@127.0.0.1" for the host; without a port, its error quotes it.
    url = f"http://ops:s3cret@127.0.0.1{port}"
    assert main(["tx", "--url", url, "--token", TOKEN, "list"]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"txn tx: cannot reach http://127.0.0.1{port}: "), err
    assert "s3cret" not in err and "ops" not in err and TOKEN not in err


def test_the_plain_http_warning_is_one_line_and_the_command_goes_on(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def call(self: txcli.Client, path: str, body: dict[str, Any] | None = None) -> Any:
        seen.append(self.base_url + path)
        return {"items": [], "next_cursor": None}

    monkeypatch.setattr(txcli.Client, "call", call)
    assert main(["tx", "--url", "http://ops:pw@coordinator.example", "--token", TOKEN, "list"]) == 0
    out, err = capsys.readouterr()
    assert out == "no transactions\n"
    assert err == (
        "txn tx: warning: sending the token over plain http to coordinator.example; use https\n"
    )
    assert seen == ["http://ops:pw@coordinator.example/v1/transactions?limit=50"]
    assert main(["tx", "--url", "http://coordinator.example", "list"]) == 0  # no token
    assert capsys.readouterr().err == ""


class _ClosedPipe(io.StringIO):
    """A stdout whose reader is gone: writing and flushing raise, like on a closed pipe."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_cut_by_its_reader_exits_0_quietly(
    served: Canned, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served.answer("/v1/transactions/g-1/abort", 200, txn(status="aborting"))
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert tx(served, "abort", "g-1", "--note", "x") == 0  # the abort was done
    assert capsys.readouterr().err == ""
    assert len(served.seen) == 1


def test_list_into_a_pipe_closed_early_has_no_traceback(served: Canned) -> None:
    """``txn tx list | head -1``, for real: the rest of the table meets a closed pipe."""
    items = [txn(f"g-{n}") for n in range(2000)]  # more than a pipe holds
    served.answer("/v1/transactions?limit=50", 200, {"items": items, "next_cursor": None})
    run = "import sys; from coordinator.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", run, "tx", "--url", served.url, "--token", TOKEN, "list"]
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline().split()[0] == "GID"
        child.stdout.close()
        err = child.stderr.read()
        assert child.wait(timeout=60) == 0, err
    assert err == ""


def test_redirect_to_another_host_is_not_followed(
    served: Canned, other: Canned, capsys: pytest.CaptureFixture[str]
) -> None:
    served.answer("/v1/transactions/g-1", 307, {}, Location=f"{other.url}/v1/transactions/g-1")
    other.answer("/v1/transactions/g-1", 200, txn())
    assert tx(served, "show", "g-1") == 4
    assert other.seen == []
    assert capsys.readouterr().err == "txn tx: not following a redirect (307) to another host\n"


def test_redirect_on_the_same_host_keeps_the_token(
    served: Canned, capsys: pytest.CaptureFixture[str]
) -> None:
    served.answer("/v1/transactions/g-1", 307, {}, Location="/v1/transactions/g-1?events=true")
    served.answer("/v1/transactions/g-1?events=true", 200, txn())
    assert tx(served, "show", "g-1") == 0
    assert served.seen[1][2]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "url", ["ftp://h", "http://h:abc", "http://h:0", "http://h:99999", "http:///x", "h:8000"]
)
def test_a_bad_url_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tx", "--url", url, "--token", TOKEN, "list"]) == 2
    assert capsys.readouterr().err.startswith("txn tx: the coordinator URL must be http(s)://")
