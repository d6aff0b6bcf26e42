"""A submission, from a validated body to the answer: shared by the FastAPI route and its ASGI
fast path (``coordinator.fastpath``), so the two cannot answer differently."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from coordinator.declared import CatalogueUnavailable
from coordinator.errors import LOG_ERRORS
from coordinator.models import BranchOut, EventOut, TxnIn, TxnOut, new_gid
from coordinator.normalize import Invalid, normalize
from coordinator.records import BranchSpec, Inserted, NewTxn, TxnRecord
from coordinator.service import Coordinator
from participants.sdk import problems
from participants.sdk.base import sqlstate
from participants.sdk.tracing import TRACEPARENT

log = logging.getLogger(__name__)

MAX_WAIT_S = 300.0  # the longest ?wait= a submission may ask for
MAX_BODY_BYTES = 8 * 1024 * 1024  # the largest request body the API reads


def invalid(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


def to_out(record: TxnRecord, events: list[EventOut] | None = None) -> TxnOut:
    deps = record.request.get("deps")
    return TxnOut(
        gid=record.gid,
        mode=record.mode,
        status=record.status,
        reason=record.reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        branches=[
            BranchOut(
                idx=b.idx,
                depends_on=deps[b.idx] if deps and b.idx < len(deps) else None,
                participant=b.participant,
                action=b.action,
                compensation=b.compensation,
                confirm=b.confirm,
                status=b.status,
                attempts=b.attempts,
                last_error=b.last_error,
                resolved_by=b.resolved_by,
            )
            for b in record.branches
        ],
        events=events,
    )


async def submit_txn(
    c: Coordinator, body: TxnIn, wait: float, headers: Mapping[str, str] | None = None
) -> tuple[int, TxnOut]:
    """A validated submission: log it (or find it), wait up to ``wait`` s for the outcome.
    Returns (HTTP status, answer); raises what FastAPI turns into 422 and 409 answers.
    ``headers`` (lower-case names): the request's, for its trace context."""
    if c.tracing is None:
        return await _submit(c, body, wait, None)
    attributes = {"txn.gid": body.gid or "", "txn.mode": body.mode or "saga"}
    with c.tracing.server("submit", headers or {}, attributes) as span:
        status, answer = await _submit(c, body, wait, c.tracing.current_traceparent())
        span.set_attributes({"txn.gid": answer.gid, "txn.status": answer.status})
        span.set_attribute("http.response.status_code", status)
        return status, answer


async def _submit(
    c: Coordinator, body: TxnIn, wait: float, traceparent: str | None
) -> tuple[int, TxnOut]:
    try:
        plan = normalize(body, c.settings.participants)
        # Only operations the participants declare (their signed catalogues).
        where = ("body", "branches") if plan.saga is None else ("body", "input", "step")
        await c.declared.check(plan.mode, plan.branches, where)
    except Invalid as e:
        raise invalid(e.loc, e.msg) from e
    except CatalogueUnavailable as e:
        raise HTTPException(503, detail=str(e), headers={"Retry-After": "1"}) from e
    gid = body.gid or new_gid()
    request = plan.request(body)
    if traceparent:
        request[TRACEPARENT] = traceparent
    new = NewTxn(
        gid=gid,
        mode=plan.mode,
        request=request,
        request_hash=body.request_hash(),
        branches=tuple(
            BranchSpec(b.participant, b.forward, b.undo, b.payload, b.confirm)
            for b in plan.branches
        ),
        timeout_s=body.timeout_s or c.settings.default_timeout_s,
    )
    outcome, record = await c.submit(new)
    if outcome is Inserted.CONFLICT:
        raise HTTPException(
            409, detail=f"transaction {gid} already exists with a different request"
        )
    if wait > 0:
        fresh = record if outcome is Inserted.CREATED else None
        record = await c.wait(gid, wait, known=fresh) or record
    return (200 if outcome is Inserted.EXISTING else 201), to_out(record)


def log_error_answer(exc: Exception) -> Response:
    """The answer to a log failure during a request: 422 for data it cannot store, else 503."""
    if not isinstance(exc, OSError) and (sqlstate(exc) or "").startswith("22"):
        # A data exception: the request carried something the log cannot store.
        detail = f"the request holds data the log cannot store ({sqlstate(exc)})"
        return problems.response(422, {"detail": detail})
    # The log is down or unreachable: nothing was decided by this request that a retry could
    # not repeat (a submission with the same gid is idempotent).
    log.warning("log unavailable: %s", exc)
    detail = "the transaction log is unavailable; retry (with the same gid)"
    return problems.response(503, {"detail": detail}, {"Retry-After": "1"})


__all__ = ["LOG_ERRORS", "MAX_BODY_BYTES", "MAX_WAIT_S", "log_error_answer", "submit_txn"]
