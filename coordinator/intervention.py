"""Manual intervention: what an operator may do to a transaction, and why not when not.

Pure: ``plan`` turns a transaction as logged and an action into the fenced log write that
carries it out (``records.Intervention``), or refuses with the reason. The write is conditional
on the epoch and status it was planned from, and takes the transaction over like a claim, so
an operator's action and a driver's write never both succeed (docs/protocol.md, "Manual
intervention").

- retry: a live transaction no driver holds now is driven again at once, its backoff cleared.
- abort: a 2PC before its commit decision is aborted; a saga going forward compensates.
- resolve: a saga branch whose compensation keeps failing is declared compensated by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coordinator.records import Intervention, TxnRecord
from coordinator.schema import TERMINAL

MAX_NOTE = 1000


class Act(StrEnum):
    RETRY = "retry"
    ABORT = "abort"
    RESOLVE = "resolve"


@dataclass(frozen=True)
class Refusal(Exception):
    """The action is not allowed: HTTP ``status`` and what to do instead."""

    status: int
    detail: str

    def __str__(self) -> str:
        return self.detail


def check_note(note: str) -> str:
    """The operator's note, trimmed; raise ValueError when it is empty or too long."""
    trimmed = note.strip()
    if not trimmed:
        raise ValueError("a note is required: say why (it is kept in the transaction's timeline)")
    if len(trimmed) > MAX_NOTE:
        raise ValueError(f"the note must be at most {MAX_NOTE} characters")
    return trimmed


def plan(
    record: TxnRecord, act: Act, by: str, note: str, branch: int | None = None
) -> Intervention:
    """The write that carries out ``act`` on ``record``; raises Refusal (404, 409)."""
    if record.status in TERMINAL:
        raise Refusal(409, f"transaction {record.gid} is {record.status}: it is finished")
    if act is Act.RETRY:
        if record.mode in ("2pc", "tcc") and record.status == "preparing":
            # Driven again, a 2PC without its commit decision is aborted (presumed abort):
            # that is an abort, and is asked for as one.
            raise Refusal(
                409,
                f"transaction {record.gid} is preparing: driven again it would be aborted "
                "(presumed abort); abort it, or let its driver wait for the votes",
            )
        return Intervention(
            "retry",
            record.epoch,
            record.status,
            record.status,
            None,
            by,
            note,
            unleased=True,
            reset_attempts=True,
        )
    if act is Act.ABORT:
        return _abort(record, by, note)
    if branch is None:
        raise Refusal(422, "resolve needs a branch index")
    return _resolve(record, branch, by, note)


def _abort(record: TxnRecord, by: str, note: str) -> Intervention:
    reason = f"aborted by {by}: {note}"
    going = {
        ("2pc", "preparing"): "aborting",
        ("tcc", "preparing"): "aborting",
        ("saga", "running"): "compensating",
    }
    new_status = going.get((record.mode, record.status))
    if new_status is not None:
        return Intervention(
            "abort", record.epoch, record.status, new_status, reason, by, note, unleased=False
        )
    if record.status == "committing":
        raise Refusal(
            409,
            f"transaction {record.gid}'s commit decision is logged and is never undone: it "
            "commits as its participants answer (retry drives it again now)",
        )
    # aborting, compensating: the decision the operator asks for is already taken.
    raise Refusal(
        409,
        f"transaction {record.gid} is {record.status} already"
        + (
            "; a compensation that keeps failing can be resolved by hand"
            if record.status == "compensating"
            else ""
        ),
    )


def _resolve(record: TxnRecord, idx: int, by: str, note: str) -> Intervention:
    if not 0 <= idx < len(record.branches):
        raise Refusal(
            404, f"transaction {record.gid} has no branch {idx} (it has {len(record.branches)})"
        )
    if record.mode != "saga":
        raise Refusal(
            409,
            "resolve applies to saga branches; a 2PC branch finishes at its participant "
            "(commit or roll back its prepared transaction there, then retry)",
        )
    if record.status != "compensating":
        raise Refusal(
            409,
            f"saga {record.gid} is {record.status}, not compensating: abort it first, "
            "and resolve a branch whose compensation then keeps failing",
        )
    status = record.branches[idx].status
    if status == "compensated":
        raise Refusal(409, f"branch {idx} is compensated already")
    if status != "compensating":
        # Only a compensation that was tried and failed (logged `compensating`, owed again):
        # a branch still waiting for its turn (reverse order) or never sent is left alone.
        raise Refusal(
            409,
            f"branch {idx} is {status}: its compensation has not failed; resolve a branch "
            "whose compensation keeps failing (status compensating)",
        )
    reason = f"{record.reason or 'compensating'}; branch {idx} compensated by hand by {by}"
    return Intervention(
        "resolve",
        record.epoch,
        record.status,
        record.status,
        reason,
        by,
        note,
        unleased=True,
        branch=idx,
        branch_status=status,
        branch_new_status="compensated",
    )


def lease_refusal(record: TxnRecord, act: Act) -> Refusal:
    """Why a retry or resolve found a driver at work."""
    return Refusal(
        409,
        f"instance {record.owner} is driving transaction {record.gid} now; {act} applies while "
        "it waits for its next attempt (try again in a moment, or abort it)",
    )
