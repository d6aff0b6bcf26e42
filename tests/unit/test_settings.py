"""Settings fail loudly on bad configuration, and the environment is honoured."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coordinator.access import startup_problems
from coordinator.settings import Settings
from participants.ledger.app import LedgerSettings, create_app
from participants.sdk.crash import COORDINATOR_POINTS, CrashPoints
from tests.helpers import token_entries


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


def test_production_mode_refuses_insecure_and_test_only_settings() -> None:
    for setting in ("insecure_no_auth", "insecure_unsigned"):
        with pytest.raises(ValidationError, match=f"TXN_{setting.upper()}"):
            Settings(production=True, **{setting: True})
    with pytest.raises(ValidationError, match="TXN_CRASH_AT"):
        Settings(production=True, crash_at="after_decision")
    assert Settings(production=True).production


def test_an_insecure_start_is_refused_naming_the_setting() -> None:
    registry = {"ledger1": "http://127.0.0.1:9001"}
    problems = startup_problems(Settings(participants=registry))
    assert any("TXN_API_TOKENS" in p for p in problems)
    assert any("ledger1" in p and "TXN_PARTICIPANT_SECRETS" in p for p in problems)
    secured = Settings(
        participants=registry,
        participant_secrets={"ledger1": "s"},
        api_tokens=token_entries(),
    )
    assert startup_problems(secured) == []
    # A malformed token entry or secret list is refused when the settings are read.
    with pytest.raises(ValidationError, match="sha256"):
        Settings(api_tokens=[{"name": "x", "sha256": "nothex", "scopes": ["read"]}])
    with pytest.raises(ValidationError, match="scopes"):
        Settings(api_tokens=[{"name": "x", "sha256": "a" * 64, "scopes": ["root"]}])


def test_unknown_crash_point_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown crash point 'after_lunch'"):
        CrashPoints("after_lunch", "", COORDINATOR_POINTS)
    quiet = CrashPoints("", "", COORDINATOR_POINTS)
    quiet.hit("after_decision")  # not armed: returns


def test_renewal_must_come_before_the_lease_lapses() -> None:
    with pytest.raises(ValidationError, match="TXN_RENEW_INTERVAL_S"):
        Settings(lease_s=1.0, renew_interval_s=1.0)
    assert Settings(lease_s=3.0, renew_interval_s=1.0).renew_interval_s == 1.0


@pytest.mark.parametrize(("text", "seconds"), [("600", 600.0), ("P7D", 604800.0), ("0", 0.0)])
def test_retention_is_seconds_or_iso_8601(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv("TXN_RETENTION", text)
    assert Settings().retention.total_seconds() == seconds


def test_a_bad_retention_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXN_RETENTION", "soon")
    with pytest.raises(ValidationError, match="retention"):
        Settings()


def test_barrier_retention_must_outlive_two_replay_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TXNP_BARRIER_RETENTION", "P1D")
    assert LedgerSettings().barrier_retention.total_seconds() == 86400
    assert LedgerSettings(barrier_retention=0).barrier_retention.total_seconds() == 0
    with pytest.raises(ValidationError, match="at least two replay windows"):
        LedgerSettings(barrier_retention=599)  # the default window is 300 s
    with pytest.raises(ValidationError, match="at least two replay windows"):
        LedgerSettings(replay_window_s=50000)  # the retention of 1 day is now too short


def test_tracing_is_off_by_default_and_refuses_an_unknown_mode() -> None:
    assert Settings().tracing == "off" and LedgerSettings().tracing == "off"
    with pytest.raises(ValidationError, match="tracing"):
        Settings(tracing="jaeger")
