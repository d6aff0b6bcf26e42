"""No DSN password, token or secret is ever printed or logged: not by ``txn migrate``, not by a
coordinator that refuses to start (its settings' errors name the setting, never the value), and
not by ``txn dev`` or the services it runs (their log files included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import create_db
from txn_devstack.postgres import Cluster

PASSWORD = "hunter2-dsn-password"


def run(argv: list[str], env: dict[str, str], timeout_s: float = 120) -> tuple[int, str]:
    done = subprocess.run(
        argv,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def txn(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from coordinator.cli import main; sys.exit(main())",
        *args,
    ]


async def test_migrate_never_prints_the_password(pg: Cluster) -> None:
    dsn = (await create_db(pg, None)).replace("@", f":{PASSWORD}@", 1)
    code, out = run(txn("migrate", "--dsn", dsn, "--target", "ledger"), {})
    assert code == 0, out
    assert "schema at head" in out and ":***@" in out
    assert PASSWORD not in out


def test_a_refused_start_names_the_setting_and_never_the_value() -> None:
    secret, digest = "participant-secret-value", "f" * 63 + "X"
    base = {
        "TXN_PARTICIPANTS": json.dumps({"ledger1": "http://127.0.0.1:9"}),
        "TXN_LOG_DSN": f"postgresql://txn:{PASSWORD}@127.0.0.1:9/txn_log",
        "TXN_PORT": "9",
    }
    starts = {
        "no tokens": {**base, "TXN_PARTICIPANT_SECRETS": json.dumps({"ledger1": secret})},
        "a malformed token entry": {
            **base,
            "TXN_PARTICIPANT_SECRETS": json.dumps({"ledger1": secret}),
            "TXN_API_TOKENS": json.dumps([{"name": "x", "sha256": digest, "scopes": ["read"]}]),
        },
        "a malformed secret list": {
            **base,
            "TXN_PARTICIPANT_SECRETS": json.dumps({"ledger1": {"value": secret}}),
        },
    }
    for why, env in starts.items():
        code, out = run([sys.executable, "-m", "coordinator"], env, timeout_s=60)
        assert code == 2, (why, out)
        assert out.startswith("txn serve: TXN_"), (why, out)
        assert "Traceback" not in out, (why, out)
        for value in (secret, digest, PASSWORD):
            assert value not in out, (why, value, out)


def test_txn_dev_prints_and_logs_no_secret(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    tmp_path.chmod(0o755)  # the clusters' server account must be able to enter it
    proc = subprocess.Popen(
        txn("dev", "--state-dir", str(state), "--no-shop", "--ledgers", "1", "--no-fsync"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert any("Ctrl-C" in line for line in lines), "".join(lines)
        stack = json.loads((state / "stack.json").read_text())
        secrets = [stack["api_token"]]
        for service in stack["participants"] + stack["coordinators"]:
            environ = Path(f"/proc/{service['pid']}/environ").read_bytes().split(b"\0")
            for entry in environ:
                key, _, value = entry.decode().partition("=")
                if key in ("TXNP_SECRET", "TXNP_COORDINATOR_TOKEN"):
                    secrets.append(value)
                if key == "TXN_PARTICIPANT_SECRETS":
                    secrets += list(json.loads(value).values())
        assert len(secrets) >= 3
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    printed = "".join(lines) + rest
    assert proc.returncode == 0, printed
    logs = "".join(p.read_text(errors="replace") for p in (state / "logs").glob("*.log"))
    for value in secrets:
        assert value not in printed
        assert value not in logs
