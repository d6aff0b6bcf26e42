"""The submission's ASGI fast path: ``POST /v1/transactions`` answered before FastAPI's routing,
request objects, dependency machinery and response-model validation, which cost the coordinator
more CPU than the submission's own work (docs/decisions.md, "The submission's fast path").

It serves only what it can answer exactly as the FastAPI route would: a body that is strict
JSON and valid for ``TxnIn``, and a query string of at most ``wait`` within its bounds. Anything
else (an invalid body, an unknown participant, a bad ``wait``, any other parameter) is handed to
the route with the body it read, and the route answers it, 422 and all. Both run the same
``submission.submit_txn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from urllib.parse import parse_qsl

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.models import TxnIn
from coordinator.service import Coordinator
from coordinator.submission import (
    LOG_ERRORS,
    MAX_BODY_BYTES,
    MAX_WAIT_S,
    log_error_answer,
    submit_txn,
)
from participants.sdk import problems
from participants.sdk.guard import read_body, refuse, replay, send_json

PATH = "/v1/transactions"


def _wait(query: bytes) -> float | None:
    """``wait`` from the query string (0 when absent); None for anything the route should see."""
    wait = 0.0
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name != "wait":
            return None
        try:
            wait = float(value)
        except ValueError:
            return None
        if not (math.isfinite(wait) and 0 <= wait <= MAX_WAIT_S):
            return None
    return wait


class SubmitFastPath:
    def __init__(self, app: ASGIApp, coordinator: Callable[[], Coordinator]) -> None:
        self.app = app
        self.coordinator = coordinator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        # Behind the guard, which has read and limited the body already.
        body = await read_body(receive, MAX_BODY_BYTES)
        if body is None:
            await refuse(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        wait = _wait(scope.get("query_string", b""))
        parsed = None if wait is None else _txn_in(body)
        if parsed is None or wait is None:
            await self.app(scope, replay(body, receive), send)
            return
        try:
            c = self.coordinator()
            headers = None
            if c.tracing is not None:
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            status, answer = await submit_txn(c, parsed, wait, headers)
            content = answer.model_dump_json().encode()
        except RequestValidationError:
            # normalize() refused it before anything was logged: the route says why.
            await self.app(scope, replay(body, receive), send)
            return
        except HTTPException as e:
            detail = e.detail if isinstance(e.detail, str) else problems.title_of(e.status_code)
            await refuse(send, e.status_code, detail, e.headers)
            return
        except LOG_ERRORS as e:
            refusal = log_error_answer(e)
            await refusal(scope, receive, send)
            return
        await send_json(send, status, content)


def _txn_in(body: bytes) -> TxnIn | None:
    # pydantic's own JSON parser: integers of any size stay integers, as with the route's
    # json.loads (orjson would make a float of one over 64 bits, and answer differently).
    try:
        return TxnIn.model_validate_json(body)
    except (ValidationError, ValueError):
        return None
