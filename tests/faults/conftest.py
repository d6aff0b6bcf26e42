"""The fault tests share one stack of their own: they restart, freeze and crash its pieces,
which the other tests' stack must never see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from participants.sdk.tokens import token_entry
from tests.conftest import TEST_COORDINATOR_ENV
from tests.helpers import TEST_API_TOKEN, VIEWER_TOKEN
from txn_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="session")
def fault_stack(state_root: Path) -> Iterator[Stack]:
    s = Stack(
        StackConfig(
            api_token=TEST_API_TOKEN,
            extra_tokens=[token_entry("viewer", VIEWER_TOKEN, ["read"])],
            state_dir=state_root / "faults",
            fsync=False,
            coordinator_env=dict(TEST_COORDINATOR_ENV),
        )
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()
