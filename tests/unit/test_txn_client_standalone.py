"""txn_client is installable alone: it and every submodule import, and work, in a fresh
interpreter where the project's other packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OTHERS = ("coordinator", "participants", "sagas", "devstack", "bench", "migrations", "tests")

PROGRAM = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    FORBIDDEN = set(sys.argv[1].split(","))

    class Refuse:
        # Any import of the project's other packages fails, as where txn_client is alone.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())

    try:
        import coordinator  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the finder did not refuse")

    import txn_client

    names = [m.name for m in pkgutil.walk_packages(txn_client.__path__, "txn_client.")]
    for name in names:
        importlib.import_module(name)

    saga = txn_client.Saga(retry=txn_client.RetryPolicy(max_attempts=2), timeout_s=5)
    saga.step("ledger1", "/a", "/a/undo", {"x": 1}, depends_on=[])
    body = saga.body()
    assert body["mode"] == "saga" and body["retry"]["max_attempts"] == 2, body
    with txn_client.Client("http://127.0.0.1:9", "t") as client:
        assert client.urls == ["http://127.0.0.1:9"]
    leaked = sorted({m.split(".")[0] for m in sys.modules} & FORBIDDEN)
    assert not leaked, leaked
    print("ok", len(names))
    """
)


def test_txn_client_imports_and_works_without_the_other_packages() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, ",".join(OTHERS)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    kind, count = done.stdout.split()
    assert kind == "ok" and int(count) >= 6  # every submodule was imported
