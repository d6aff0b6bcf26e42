"""Settings fail loudly on bad configuration, and the environment is honoured."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coordinator.crash import COORDINATOR_POINTS, CrashPoints
from coordinator.settings import Settings
from participants.ledger.app import LedgerSettings, create_app


def test_participant_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LedgerSettings().name == "ledger"
    monkeypatch.setenv("TXNP_NAME", "ledger7")
    settings = LedgerSettings()
    assert settings.name == "ledger7"
    assert create_app(settings).title == "ledger (ledger7)"


def test_registry_is_parsed_from_json_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXN_PARTICIPANTS", '{"ledger1": "http://127.0.0.1:9001/"}')
    assert Settings().participants == {"ledger1": "http://127.0.0.1:9001"}
    with pytest.raises(ValidationError, match="must be http"):
        Settings(participants={"ledger1": "ftp://x"})
    with pytest.raises(ValidationError, match="participant name"):
        Settings(participants={"bad name": "http://x"})


def test_production_mode_requires_a_secret_and_no_crash_points() -> None:
    with pytest.raises(ValidationError, match="TXN_HMAC_SECRET"):
        Settings(production=True)
    with pytest.raises(ValidationError, match="TXN_CRASH_AT"):
        Settings(production=True, hmac_secret="s", crash_at="after_decision")
    assert Settings(production=True, hmac_secret="s").production


def test_unknown_crash_point_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown crash point 'after_lunch'"):
        CrashPoints("after_lunch", "", COORDINATOR_POINTS)
    quiet = CrashPoints("", "", COORDINATOR_POINTS)
    quiet.hit("after_decision")  # not armed: returns


def test_renewal_must_come_before_the_lease_lapses() -> None:
    with pytest.raises(ValidationError, match="TXN_RENEW_INTERVAL_S"):
        Settings(lease_s=1.0, renew_interval_s=1.0)
    assert Settings(lease_s=3.0, renew_interval_s=1.0).renew_interval_s == 1.0
