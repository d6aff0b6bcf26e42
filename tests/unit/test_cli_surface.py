"""The command line a new user meets first: `txn --help` lists every command with a line each,
every option says what it is for, `txn --version` answers, and a command facing a bad setting
or a database it cannot reach ends in one line naming what to fix, with exit code 2, never a
traceback or a password. `txn serve` waits for an unreachable log with one line per attempt."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator import cli
from coordinator.cli import build_parser
from txn_devstack import postgres
from txn_devstack.postgres import free_port

DEAD_DSN = "postgresql://someone:hunter2pw@127.0.0.1:{port}/nowhere"


def txn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_and_option_says_what_it_is_for() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert {"dev", "demo", "migrate", "token", "retention", "serve", "bench", "tx"} <= set(commands)
    shown = parser.format_help()
    listed = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in listed._choices_actions}
    missing = []
    for name, sub in commands.items():
        assert helps.get(name), f"txn {name} has no line in txn --help"
        assert name in shown
        # Nested commands too (txn tx list, txn tx show, ...).
        parsers = {name: sub} | {f"{name} {n}": p for n, p in subcommands(sub).items()}
        for full, p in parsers.items():
            missing += [f"txn {full} {a.option_strings or a.dest}" for a in _undocumented(p)]
    assert not missing, "options without help:\n" + "\n".join(missing)


def _undocumented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and not (a.help and a.help.strip())
    ]


def test_version() -> None:
    done = txn("--version")
    assert done.returncode == 0 and done.stdout.startswith("txn "), done
    assert done.stdout.split()[1][0].isdigit()


def one_line_refusal(done: subprocess.CompletedProcess[str], command: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done
    assert len(lines) == 1 and lines[0].startswith(f"txn {command}: "), done.stderr
    assert "Traceback" not in done.stderr and "hunter2pw" not in done.stderr + done.stdout
    return lines[0]


def test_one_shot_commands_facing_an_unreachable_database() -> None:
    dead = DEAD_DSN.format(port=free_port())
    line = one_line_refusal(txn("migrate", "--target", "coordinator", "--dsn", dead), "migrate")
    assert "the database cannot be used" in line and "ConnectionRefused" in line
    line = one_line_refusal(txn("retention", "--dsn", dead, "--dry-run"), "retention")
    assert "the database cannot be used" in line


def test_bad_settings_end_in_one_line() -> None:
    line = one_line_refusal(txn("retention", "--older-than", "soon", "--dsn", "x"), "retention")
    assert "--older-than" in line
    line = one_line_refusal(txn("serve", env={"TXN_LEASE_S": "soon"}), "serve")
    assert "TXN_LEASE_S" in line


def test_serve_waits_for_an_unreachable_log_one_line_per_attempt(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TXN_LOG_DSN": DEAD_DSN.format(port=free_port()),
        "TXN_INSECURE_NO_AUTH": "true",
        "TXN_PORT": str(free_port()),
        "TXN_CLAIM_INTERVAL_S": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    out_file = tmp_path / "serve.out"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        # Started (imports can be slow on a busy machine), then a few attempts.
        deadline = time.monotonic() + 60
        while out_file.read_text().count("log unavailable") < 4:
            assert proc.poll() is None, "serve gave up instead of waiting for its log"
            assert time.monotonic() < deadline, out_file.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()  # ours, by PID
        proc.wait(timeout=30)
    text = out_file.read_text()
    attempts = [line for line in text.splitlines() if "log unavailable" in line]
    assert len(attempts) >= 4, text
    assert "Traceback" not in text and "hunter2pw" not in text, text


def test_no_postgres_anywhere_ends_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Where no server binaries can be found (and `./run` could not install the wheel), the
    demo says what to install or set, in one line, and exits 2."""
    monkeypatch.setattr(postgres, "candidate_bindirs", lambda: [tmp_path])
    assert cli.main(["demo", "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("txn demo: no PostgreSQL server binaries found")
    assert "TXN_PG_BINDIR" in err[0] and "pgbinaries" in err[0]
