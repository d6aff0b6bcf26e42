"""The participant SDK stands alone: it imports nothing of the coordinator, the named sagas or the
project's tools, so a service that installs it for its endpoints carries none of them. Checked in
a fresh interpreter where those packages cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_THE_SDK = ("coordinator", "sagas", "devstack", "bench", "migrations")

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} imported by the SDK")
            return None

    sys.meta_path.insert(0, Refuse())
    import participants.sdk
    names = [m.name for m in pkgutil.walk_packages(participants.sdk.__path__, "participants.sdk.")]
    for name in names:
        importlib.import_module(name)
    print(len(names), "modules;", sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED))
    """
)


def probe(blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_sdk_module_imports_with_the_coordinator_and_the_tools_unimportable() -> None:
    done = probe(NOT_THE_SDK)
    assert done.returncode == 0, done.stderr
    count, _, loaded = done.stdout.strip().partition(" modules; ")
    assert int(count) >= 15  # the walk found the SDK's modules, not an empty package
    assert loaded == "[]"


def test_the_probe_fails_when_the_sdk_needs_a_blocked_package() -> None:
    # Keeps the check able to fail: the SDK needs txn_client (its HTTP client), so blocking it
    # must fail the probe with the blocker's message.
    done = probe(("txn_client",))
    assert done.returncode != 0
    assert "imported by the SDK" in done.stderr
