"""The OpenAPI documents tell the truth: schemathesis, with all its checks, against the
coordinator and one participant service (a ledger) of the session's stack, over real HTTP.

Every answer must be documented (status, content type, body), every request the document
allows must be accepted (no 422 for a schema-valid body: the coordinator's submission schema is
the deployment's, made from its registry and the participants' catalogues), every request it
forbids refused. Bounded: a fixed seed, at most ``MAX_EXAMPLES`` cases per operation and phase,
one worker, the two runs at once; well under two minutes in all.

The participant's signed endpoints answer 401 without the coordinator's signature, which
schemathesis cannot make: it sees the 401 (documented), not the branch calls themselves (those
are the SDK's own tests'). Its business endpoints get the stack's admin token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis  # noqa: F401  (a missing schemathesis fails the test, never skips it)

from tests.helpers import AUTH, api_client, catalogues_read
from txn_devstack.stack import Stack

ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = 25
SEED = 1
RUN_TIMEOUT_S = 150
# The coverage phase draws every case a schema defines, with no bound: for the submission, whose
# saga branches have a schema per position (a depends_on names earlier branches), that is five
# thousand requests and minutes. The submission gets the fuzzing and stateful phases instead
# (positive and negative bodies, every check); every other operation gets all three.
CONFIG = """
[[operations]]
include-name = "POST /v1/transactions"
phases.coverage.enabled = false
"""


def schemathesis_run(base_url: str, cwd: Path) -> subprocess.Popen[str]:
    cwd.mkdir()
    (cwd / "schemathesis.toml").write_text(CONFIG)
    command = [
        str(ST),
        "--config-file",
        str(cwd / "schemathesis.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: {AUTH['Authorization']}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-shrink",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    env["NO_COLOR"] = "1"
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def check_passed(run: subprocess.Popen[str], what: str) -> None:
    try:
        output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.kill()
        output, _ = run.communicate()
        pytest.fail(f"schemathesis against {what} ran over {RUN_TIMEOUT_S} s:\n{output}")
    figures = [line.strip() for line in output.splitlines() if " generated, " in line]
    last = [line for line in output.splitlines() if line.startswith("=")][-1:]
    print(f"schemathesis against {what}: exit {run.returncode};", *figures, *last)
    assert run.returncode == 0, f"schemathesis found failures in {what}:\n{output}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_schemathesis_passes_against_the_coordinator_and_a_participant(
    stack: Stack, tmp_path: Path
) -> None:
    async with api_client(timeout=10) as client:
        # The submission schema names only participants whose catalogue was read.
        await catalogues_read(client, stack.coordinator_url)
        served = (await client.get(f"{stack.coordinator_url}/openapi.json")).json()
    body = served["components"]["schemas"]["TxnIn"]
    assert len(body["oneOf"]) >= 3, body  # 2PC, saga, and at least the named saga transfer
    # Both at once: each waits on its server most of the time.
    coordinator = schemathesis_run(stack.coordinator_url, tmp_path / "coordinator")
    ledger = schemathesis_run(stack.service("ledger1").url, tmp_path / "ledger")
    check_passed(coordinator, "the coordinator")
    check_passed(ledger, "the ledger1 service")
