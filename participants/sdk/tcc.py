"""The TCC half of the participant SDK: try / confirm / cancel. The try reserves a business
resource (a frozen amount, a held seat) and commits at once: no database lock is held between
the phases. Once every try succeeded the coordinator confirms every branch (retried until each
succeeds); otherwise it cancels every branch whose try it sent.

Per branch, rows ``(gid, branch, 'try')``, ``(gid, branch, 'confirm')`` and ``(gid, branch,
'cancel')`` in the barrier table, each written in the local transaction of its business change,
make every call idempotent:

- try and cancel are the saga's action and compensation under other names (the same code,
  ``participants.sdk.saga``): a duplicate answers as the first did; a refused try is recorded
  with its reason; a cancel that arrives before its try ever ran writes the try's row itself as
  ``null_cancelled`` and succeeds without business code, so the late try is refused
  (anti-hanging); a cancel after a refused try has nothing to undo;
- a confirm takes its own key with the handler's change; a duplicate answers without business
  code; a confirm whose try row is not ``done`` is refused and nothing is recorded (the
  coordinator never sends one: this protects the resource). A refused confirm records nothing,
  so the coordinator's retry runs it again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from participants.sdk.base import Handler, call_handler
from participants.sdk.saga import (
    _INSERT,
    _READ_ACTION,
    DONE,
    Phases,
    Reply,
    SagaBarrier,
    _row,
)

log = logging.getLogger(__name__)

TRY, CONFIRM, CANCEL = "try", "confirm", "cancel"
NULL_CANCELLED = "null_cancelled"
CANCELLED_FIRST = "this branch was cancelled before it ran: the try is refused"
CONFIRM_WITHOUT_TRY = "confirm without a successful try: refused"

TCC = Phases(
    forward=TRY,
    undo=CANCEL,
    null=NULL_CANCELLED,
    late=CANCELLED_FIRST,
    undone="cancelled",
    forward_label="try",
    undo_label="cancel",
    forward_pause="before_try_commit",
    undo_pause="before_cancel_commit",
)


class TccBarrier(SagaBarrier):
    """run_try, run_confirm and run_cancel of one TCC branch, as (HTTP status, JSON body)."""

    async def run_try(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        """200: reserved now, or earlier (a duplicate: the handler does not run again).
        409: refused now or earlier (same reason), or cancelled before it ran."""
        return await self._run_forward(TCC, gid, branch, payload, handler)

    async def run_cancel(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        """200: released now or earlier, or nothing to release (the try failed, or never ran
        and now never will: ``{"null": true}``). 409: the handler refused; nothing is recorded,
        so a retry runs it again."""
        return await self._run_undo(TCC, gid, branch, payload, handler)

    async def run_confirm(
        self, gid: str, branch: int, payload: dict[str, Any], handler: Handler
    ) -> Reply:
        """200: confirmed now, or earlier (a duplicate: the handler does not run again).
        409: the handler refused, or the try did not succeed; nothing is recorded."""
        key = {"gid": gid, "branch": branch}

        async def work(conn: AsyncConnection) -> tuple[int, dict[str, Any], bool]:
            mine = (await conn.execute(_INSERT, _row(key, CONFIRM, DONE))).first()
            if mine is None:  # confirmed already: answer as the first did
                return 200, {"confirmed": True, "repeat": True}, False
            tried = (await conn.execute(_READ_ACTION, {**key, "op": TRY})).first()
            if tried is None or tried.outcome != DONE:
                log.warning(
                    "refused a confirm whose try did not succeed (%s)",
                    "no try" if tried is None else tried.outcome,
                    extra=key,
                )
                return 409, {"reason": CONFIRM_WITHOUT_TRY}, False
            await self._at_barrier(CONFIRM, gid, branch)
            result = await call_handler(handler, conn, payload, gid, branch)
            await self._pause_at("before_confirm_commit")  # pragma: no mutate
            return 200, {"confirmed": True, "result": result or {}}, True

        reply = await self._in_transaction("confirm", gid, branch, work)
        if reply[0] == 200:
            log.debug("confirm done", extra=key)
        return reply
