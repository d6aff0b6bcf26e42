"""What an operator may do to a transaction in each state, and the reason given when not
(coordinator/intervention.py; pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coordinator.intervention import Act, Refusal, check_note, plan
from coordinator.records import BranchRecord, TxnRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(mode: str, status: str, branches: tuple[str, ...] = ("succeeded",)) -> TxnRecord:
    return TxnRecord(
        gid="g1",
        mode=mode,
        status=status,
        reason="step 1 refused",
        created_at=NOW,
        updated_at=NOW,
        deadline_at=NOW,
        attempts=7,
        owner="c1",
        epoch=4,
        request_hash="h",
        branches=[
            BranchRecord(i, "ledger1", "/a", "/u", {}, s, 3, "boom", NOW)
            for i, s in enumerate(branches)
        ],
    )


@pytest.mark.parametrize(
    ("mode", "status", "new_status"),
    [("2pc", "preparing", "aborting"), ("saga", "running", "compensating")],
)
def test_abort_before_a_decision(mode: str, status: str, new_status: str) -> None:
    write = plan(record(mode, status), Act.ABORT, "alice", "customer cancelled")
    assert (write.epoch, write.status, write.new_status) == (4, status, new_status)
    assert write.reason == "aborted by alice: customer cancelled"
    assert write.kind == "abort" and write.by == "alice" and write.note == "customer cancelled"
    # An abort overrules a live driver: the epoch it bumps fences that driver out.
    assert not write.unleased and write.branch is None


@pytest.mark.parametrize(
    ("mode", "status", "says"),
    [
        ("2pc", "committing", "commit decision is logged"),
        ("2pc", "aborting", "aborting already"),
        ("saga", "compensating", "compensating already"),
        ("2pc", "committed", "finished"),
        ("2pc", "aborted", "finished"),
        ("saga", "committed", "finished"),
        ("saga", "aborted", "finished"),
    ],
)
def test_abort_refused_after_a_decision(mode: str, status: str, says: str) -> None:
    with pytest.raises(Refusal) as refused:
        plan(record(mode, status), Act.ABORT, "alice", "n")
    assert refused.value.status == 409 and says in refused.value.detail


def test_retry_of_a_preparing_2pc_is_an_abort_and_is_refused() -> None:
    with pytest.raises(Refusal) as refused:
        plan(record("2pc", "preparing"), Act.RETRY, "bob", "n")
    assert refused.value.status == 409 and "abort it" in refused.value.detail


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("2pc", "committing"),
        ("2pc", "aborting"),
        ("saga", "running"),
        ("saga", "compensating"),
    ],
)
def test_retry_any_live_transaction_no_driver_holds(mode: str, status: str) -> None:
    write = plan(record(mode, status), Act.RETRY, "bob", "participant is back")
    assert write.new_status == status and write.reason is None
    assert write.unleased and write.reset_attempts


@pytest.mark.parametrize("status", ["committed", "aborted"])
def test_retry_refused_when_finished(status: str) -> None:
    with pytest.raises(Refusal) as refused:
        plan(record("saga", status), Act.RETRY, "bob", "n")
    assert refused.value.status == 409


def test_resolve_a_branch_whose_compensation_failed() -> None:
    rec = record("saga", "compensating", ("compensated", "compensating"))
    write = plan(rec, Act.RESOLVE, "carol", "refunded by bank transfer", 1)
    assert (write.branch, write.branch_status, write.branch_new_status) == (
        1,
        "compensating",
        "compensated",
    )
    assert write.new_status == "compensating" and write.unleased
    assert write.reason == "step 1 refused; branch 1 compensated by hand by carol"


@pytest.mark.parametrize(
    ("mode", "status", "branches", "idx", "code", "says"),
    [
        ("saga", "compensating", ("compensated",), 0, 409, "compensated already"),
        ("saga", "compensating", ("pending",), 0, 409, "has not failed"),
        # Still waiting for its turn (reverse order), or its outcome unknown: not failed.
        ("saga", "compensating", ("succeeded",), 0, 409, "has not failed"),
        ("saga", "compensating", ("failed",), 0, 409, "has not failed"),
        ("saga", "compensating", ("maybe",), 0, 409, "has not failed"),
        ("saga", "compensating", ("compensating",), 1, 404, "no branch 1"),
        ("saga", "running", ("compensating",), 0, 409, "abort it first"),
        ("2pc", "committing", ("prepared",), 0, 409, "saga branches"),
        ("saga", "aborted", ("compensated",), 0, 409, "finished"),
    ],
)
def test_resolve_refused(
    mode: str, status: str, branches: tuple[str, ...], idx: int, code: int, says: str
) -> None:
    with pytest.raises(Refusal) as refused:
        plan(record(mode, status, branches), Act.RESOLVE, "carol", "n", idx)
    assert refused.value.status == code and says in refused.value.detail


def test_a_note_is_required_and_bounded() -> None:
    assert check_note("  why  ") == "why"
    with pytest.raises(ValueError, match="required"):
        check_note("   ")
    with pytest.raises(ValueError, match="at most"):
        check_note("x" * 1001)
