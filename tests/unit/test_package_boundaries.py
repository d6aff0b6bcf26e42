"""Package boundaries, checked in a fresh interpreter where the packages a side must not need
cannot be imported at all:

- the participant SDK imports nothing of the coordinator, the named sagas or the project's tools,
  so a service that installs it for its endpoints carries none of them;
- txn_client, the client library, imports nothing else of the project (installable alone), and
  works: it builds a saga and opens a client.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_SDK = ("coordinator", "sagas", "txn_devstack", "txn_bench", "migrations", "tests")
NOT_THE_CLIENT = ("participants", *NOT_THE_SDK)

# argv: the package to import whole, the packages to refuse. Prints the modules walked and the
# refused packages that got loaded anyway (none, or the import would have failed).
PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    PACKAGE, BLOCKED = sys.argv[1], set(sys.argv[2].split(","))

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())
    root = importlib.import_module(PACKAGE)
    names = [m.name for m in pkgutil.walk_packages(root.__path__, PACKAGE + ".")]
    for name in names:
        importlib.import_module(name)
    """
)
REPORT = """
print(len(names), sorted({k.split(".")[0] for k in sys.modules} & BLOCKED))
"""
CLIENT_WORKS = """
import txn_client
saga = txn_client.Saga(retry=txn_client.RetryPolicy(max_attempts=2), timeout_s=5)
saga.step("ledger1", "/a", "/a/undo", {"x": 1}, depends_on=[])
body = saga.body()
assert body["mode"] == "saga" and body["retry"]["max_attempts"] == 2, body
with txn_client.Client("http://127.0.0.1:9", "t") as client:
    assert client.urls == ["http://127.0.0.1:9"]
"""


def probe(package: str, blocked: tuple[str, ...], then: str = "") -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE + then + REPORT, package, ",".join(blocked)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    count, _, loaded = done.stdout.strip().partition(" ")
    return int(count), loaded


def test_every_sdk_module_imports_without_the_coordinator_and_the_tools() -> None:
    count, loaded = probe("participants.sdk", NOT_THE_SDK)
    assert count >= 15  # the walk found the SDK's modules, not an empty package
    assert loaded == "[]"


def test_txn_client_imports_and_works_without_the_rest_of_the_project() -> None:
    count, loaded = probe("txn_client", NOT_THE_CLIENT, CLIENT_WORKS)
    assert count >= 6
    assert loaded == "[]"


def test_the_probe_fails_when_a_needed_package_is_refused() -> None:
    # Keeps the checks able to fail: the SDK needs txn_client (its HTTP client).
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "participants.sdk", "txn_client"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ImportError: txn_client is not installed here" in done.stderr
