"""One-round-trip branch calls: a handler whose whole business change is one SQL statement can
also give that statement, and the SDK then sends the barrier row, the statement and ``PREPARE
TRANSACTION`` (or ``COMMIT``) to the database as one text, one round trip instead of three.

It is an optimistic path for the happy case only. Anything else (a repeated call whose barrier
key is taken, a statement that returns no row, a lock wait, any refusal by the server) makes the
text fail before its end, so the local transaction holds nothing and is rolled back; the call
then runs the ordinary path with the handler, which answers it as it always did (repeats as
the first call, refusals with the handler's own reason). Either the whole text took effect, up
to and including the prepare or commit, or none of it did.

The statement is written with ``{name}`` placeholders; ``render`` fills them with values that
are safe as literals (integers, and strings of letters, digits and ``._:-``). A payload with
any other value does not take the one-shot path."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from participants.sdk.base import _Core, begin, literal
from participants.sdk.schema import BARRIER

# How long the one text waits for a lock before it gives up and leaves the call to the
# ordinary path (which waits the participant's whole lock timeout): a contended call then waits
# about that timeout once, not twice.
LOCK_WAIT_MS = 50


@dataclass(frozen=True)
class Statement:
    """One data-modifying statement with ``RETURNING``: it returns a row when the step applies
    and none when it is refused (``UPDATE ... WHERE balance + {delta} >= 0 RETURNING 1``)."""

    sql: str
    values: dict[str, int | str]
    # The call's answer when it takes effect (the handler's return value would say the same).
    result: dict[str, Any] | None = None


# Builds a handler's statement from the call's payload; None: take the ordinary path.
OneShot = Callable[[dict[str, Any]], Statement | None]

_SAFE_TEXT = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
_BIG = 2**63


def sql_value(value: object) -> str | None:
    """``value`` as an SQL literal, or None when it is not one of the few kinds sent as text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if -_BIG < value < _BIG else None
    if isinstance(value, str) and _SAFE_TEXT.match(value):
        return f"'{value}'"
    return None


def render(statement: Statement) -> str | None:
    """The statement with its values in place, or None if a value cannot be sent as text."""
    rendered: dict[str, str] = {}
    for name, value in statement.values.items():
        text = sql_value(value)
        if text is None:
            return None
        rendered[name] = text
    return statement.sql.format(**rendered)


def business_text(one_shot: OneShot, payload: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The handler's statement for this payload as text, with the answer's result; None: take
    the ordinary path (the handler then judges a payload the builder could not read)."""
    try:
        statement = one_shot(payload)
    except (KeyError, TypeError, ValueError):
        return None
    text = render(statement) if statement is not None else None
    if statement is None or text is None:
        return None
    return text, statement.result or {}


async def attempt(
    core: _Core,
    one_shot: OneShot | None,
    payload: dict[str, Any],
    text_of: Callable[[str], str],
) -> dict[str, Any] | None:
    """Done in one round trip (the whole text, ``text_of`` the business statement): the answer's
    result. None: nothing was done, take the ordinary path."""
    if one_shot is None or not core._one_shot_allowed():
        return None
    business = business_text(one_shot, payload)
    if business is None:
        return None
    return business[1] if await core._in_one_round_trip(text_of(business[0])) else None


def _exactly_one(dml: str) -> str:
    """Run ``dml`` and fail (division by zero) unless it returned a row: the rest of the text
    is then skipped and the transaction aborted, so nothing after it runs."""
    return f"WITH step AS ({dml}) SELECT 1 / count(*) FROM step"


def prepare_text(gid: str, branch: int, xid: str, business: str) -> str:
    """BEGIN; the 2PC barrier row (which must be new); the business statement; PREPARE."""
    barrier = (
        f"INSERT INTO {BARRIER} (gid, branch, op, outcome) "
        f"SELECT {literal(gid)}, {int(branch)}, '2pc', 'prepared' "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_prepared_xacts "
        f"WHERE gid = {literal(xid)} AND database = current_database()) "
        "ON CONFLICT DO NOTHING RETURNING 1"
    )
    return (
        begin(LOCK_WAIT_MS)
        + f"{_exactly_one(barrier)}; {_exactly_one(business)}; "
        + f"PREPARE TRANSACTION {literal(xid)}"
    )


def action_text(gid: str, branch: int, business: str) -> str:
    """BEGIN; the saga action's barrier row (which must be new); the business statement; COMMIT."""
    barrier = (
        f"INSERT INTO {BARRIER} (gid, branch, op, outcome) "
        f"VALUES ({literal(gid)}, {int(branch)}, 'action', 'done') "
        "ON CONFLICT DO NOTHING RETURNING 1"
    )
    return begin(LOCK_WAIT_MS) + f"{_exactly_one(barrier)}; {_exactly_one(business)}; COMMIT"
