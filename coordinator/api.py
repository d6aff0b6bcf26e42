"""The REST API: submit a transaction, read it, list them; health and readiness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.db import LOG_APPLICATION_NAME
from coordinator.fastpath import SubmitFastPath
from coordinator.logstore import LogStore
from coordinator.models import (
    STATUSES,
    EventOut,
    PageOut,
    TxnIn,
    TxnOut,
)
from coordinator.pglog import PgLog
from coordinator.service import Coordinator
from coordinator.settings import Settings, get_settings
from coordinator.submission import (
    LOG_ERRORS,
    MAX_BODY_BYTES,
    MAX_WAIT_S,
    invalid,
    log_error_answer,
    submit_txn,
    to_out,
)
from coordinator.transport import HttpTransport, Transport
from participants.sdk.asgi import outermost
from participants.sdk.wire import GID_PATTERN

log = logging.getLogger(__name__)


class BodyLimit:
    """413 for a declared body over MAX_BODY_BYTES. Plain ASGI: FastAPI's ``@app.middleware``
    runs every request through extra tasks and streams, which showed in the profile."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                    too_big = JSONResponse(
                        {"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413
                    )
                    await too_big(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    store: LogStore | None = None,
    transport: Transport | None = None,
) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        coordinator = Coordinator(
            settings,
            store
            or PgLog.connect(
                settings.log_dsn,
                settings.pool_size,
                application_name=f"{LOG_APPLICATION_NAME} {settings.instance_id}",
            ),
            transport
            or HttpTransport(settings.participants, settings.call_timeout_s, settings.hmac_secret),
        )
        app.state.coordinator = coordinator
        await coordinator.start()
        try:
            yield
        finally:
            await coordinator.stop()

    app = FastAPI(
        title="txn coordinator",
        summary="Distributed transactions over Postgres-backed services: 2PC and sagas.",
        lifespan=lifespan,
    )

    def coord(request: Request) -> Coordinator:
        c: Coordinator = request.app.state.coordinator
        return c

    # Outside the app's middleware stack: a submission skips every layer it does not need.
    outermost(app, lambda inner: BodyLimit(SubmitFastPath(inner, lambda: app.state.coordinator)))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the offending input, which fails on undecodable bytes:
        # answer with where and what, never the input itself.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    async def log_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return log_error_answer(exc)

    for error in LOG_ERRORS:
        app.add_exception_handler(error, log_unavailable)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        try:
            await coord(request).store.ping()
        except Exception as e:
            return JSONResponse({"status": "log unreachable", "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        c = coord(request)
        live = await c.store.live_summary(c.settings.stuck_attempts)
        return PlainTextResponse(
            c.metrics.render(live), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post(
        "/v1/transactions",
        status_code=201,
        response_model=TxnOut,
        responses={
            200: {"description": "Same gid, same body: the existing transaction."},
            409: {"description": "Same gid, different body."},
        },
        tags=["transactions"],
    )
    async def submit(
        body: TxnIn,
        request: Request,
        response: Response,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the outcome.")
        ] = 0,
    ) -> TxnOut:
        status, answer = await submit_txn(coord(request), body, wait)
        response.status_code = status
        return answer

    @app.get("/v1/transactions/{gid}", response_model=TxnOut, tags=["transactions"])
    async def get_one(
        request: Request,
        gid: Annotated[str, Path(pattern=GID_PATTERN.pattern)],
        events: Annotated[bool, Query(description="Include the event timeline.")] = True,
    ) -> TxnOut:
        c = coord(request)
        record = await c.store.get(gid)
        if record is None:
            raise HTTPException(404, detail=f"no transaction with gid {gid}")
        record = await c.resolve_doubt(record)
        timeline = None
        if events:
            timeline = [
                EventOut(at=e.at, kind=e.kind, branch=e.branch, detail=e.detail)
                for e in await c.store.events(gid)
            ]
        return to_out(record, timeline)

    @app.get("/v1/transactions", response_model=PageOut, tags=["transactions"])
    async def list_page(
        request: Request,
        status: Annotated[str | None, Query(description=f"One of {', '.join(STATUSES)}.")] = None,
        mode: Annotated[str | None, Query(pattern="^(2pc|saga)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> PageOut:
        if status is not None and status not in STATUSES:
            raise invalid(("query", "status"), f"status must be one of {', '.join(STATUSES)}")
        try:
            page = await coord(request).store.page(status, mode, limit, cursor)
        except ValueError as e:
            raise invalid(("query", "cursor"), str(e)) from e
        return PageOut(items=[to_out(r) for r in page.items], next_cursor=page.next_cursor)

    return app
