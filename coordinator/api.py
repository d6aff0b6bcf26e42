"""The REST API: submit a transaction, read it, list them; health and readiness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from coordinator import access, openapi_contract
from coordinator.console import pages as console
from coordinator.cursor import CURSOR_PATTERN
from coordinator.fastpath import SubmitFastPath
from coordinator.intervention import Act, Refusal, check_note
from coordinator.logstore import LogStore
from coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from coordinator.models import (
    STATUSES,
    EventOut,
    NoteIn,
    PageOut,
    TxnIn,
    TxnOut,
)
from coordinator.pglog import PgLog
from coordinator.records import ListFilter
from coordinator.service import Coordinator
from coordinator.settings import LOG_APPLICATION_NAME, Settings, get_settings
from coordinator.submission import (
    LOG_ERRORS,
    MAX_WAIT_S,
    invalid,
    log_error_answer,
    submit_txn,
    to_out,
)
from coordinator.transport import HttpTransport, Transport
from participants.sdk import problems, wire
from participants.sdk.asgi import outermost
from participants.sdk.guard import Guard
from participants.sdk.wire import GID_PATTERN

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    store: LogStore | None = None,
    transport: Transport | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    unfit = access.startup_problems(settings)
    if unfit:
        raise ValueError("; ".join(unfit))
    if settings.insecure_no_auth:
        log.warning("INSECURE: the API needs no token (TXN_INSECURE_NO_AUTH)")
    for name in settings.unsigned_participants():
        log.warning("INSECURE: calls to participant %s are not signed", name)
    tokens = settings.tokens()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        coordinator = Coordinator(
            settings,
            store
            or PgLog.connect(
                settings.log_dsn.get_secret_value(),
                settings.pool_size,
                application_name=f"{LOG_APPLICATION_NAME} {settings.instance_id}",
            ),
            transport
            or HttpTransport(
                settings.participants,
                settings.call_timeout_s,
                {name: settings.secrets_of(name) for name in settings.participants},
            ),
        )
        app.state.coordinator = coordinator
        try:
            await coordinator.start()
        except BaseException:
            await coordinator.stop()  # what start opened (pools, tracing) is closed again
            raise
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

    # Outside the app's middleware stack: the guard (tokens, body limit, content type) in front
    # of everything, then admission, then the submission's fast path, then the routes.
    outermost(
        app,
        lambda inner: Guard(
            access.Admission(
                SubmitFastPath(inner, lambda: app.state.coordinator),
                lambda: app.state.coordinator.in_flight(),
                settings.max_in_flight,
            ),
            access.policy(settings),
            lambda: tokens,
        ),
    )
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = access.secure_openapi(plain_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    problems.install(app, json_bodies=True)

    def catalogues() -> dict[str, Any]:
        c = getattr(app.state, "coordinator", None)
        return c.declared.snapshot() if c is not None else {}

    # The document served is the deployment's: its participants, operations and sagas.
    openapi_contract.install(app, list(settings.participants), catalogues)

    async def log_unavailable(request: Request, exc: Exception) -> Response:
        return log_error_answer(exc)

    for error in LOG_ERRORS:
        app.add_exception_handler(error, log_unavailable)

    if settings.console:
        console.mount(app, coord)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "The log is unreachable."}})
    async def readyz(request: Request) -> Response:
        try:
            await coord(request).store.ping()
        except Exception as e:
            # The exception's text may name hosts and users: the log says it, the answer not.
            log.warning("readyz: log unreachable: %s", type(e).__name__)
            return problems.response(503, {"detail": "the log is unreachable"})
        # Informative, not gating: a participant that is down must not take every coordinator
        # out of service (its submissions are refused with 503 until its catalogue is read).
        catalogues = coord(request).declared.read()
        return JSONResponse({"status": "ready", "catalogues": catalogues})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text. Never reads the log: its gauges are sampled in the background
        (TXN_METRICS_INTERVAL_S), so this answers while the log is down."""
        return Response(coord(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post(
        "/v1/transactions",
        status_code=201,
        response_model=TxnOut,
        responses={
            200: {"model": TxnOut, "description": "Same gid, same body: the existing one."},
            409: {"description": "Same gid, different body."},
            422: {"description": SUBMIT_422},
            429: {"description": "This coordinator drives its most transactions; retry."},
            503: {"description": SUBMIT_503},
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
        status, answer = await submit_txn(coord(request), body, wait, request.headers)
        response.status_code = status
        return answer

    async def read_out(c: Coordinator, gid: str, events: bool = True) -> TxnOut:
        record = await c.store.get(gid)
        if record is None:
            raise HTTPException(404, detail=f"no transaction with gid {gid}")
        timeline = None
        if events:
            timeline = [
                EventOut(at=e.at, kind=e.kind, branch=e.branch, detail=e.detail)
                for e in await c.store.events(gid)
            ]
        return to_out(record, timeline)

    @app.get(
        "/v1/transactions/{gid}",
        response_model=TxnOut,
        responses={404: {"description": "No transaction with this gid."}, **LOG_DOWN},
        tags=["transactions"],
    )
    async def get_one(
        request: Request,
        gid: Annotated[str, Path(pattern=GID_PATTERN.pattern)],
        events: Annotated[bool, Query(description="Include the event timeline.")] = True,
    ) -> TxnOut:
        return await read_out(coord(request), gid, events)

    @app.get(
        "/v1/transactions",
        response_model=PageOut,
        tags=["transactions"],
        responses={422: {"description": LIST_422}, **LOG_DOWN},
    )
    async def list_page(
        request: Request,
        status: Annotated[
            str | None,
            Query(description="Only those in this status.", json_schema_extra={"enum": STATUSES}),
        ] = None,
        mode: Annotated[str | None, Query(pattern="^(2pc|saga|tcc)$")] = None,
        participant: Annotated[
            str | None, Query(max_length=64, description="Only those with a branch on it.")
        ] = None,
        gid_prefix: Annotated[
            str | None, Query(max_length=128, description="Only gids that start with it.")
        ] = None,
        older_than_s: Annotated[
            float | None, Query(ge=0, le=10**9, description="Created at least this long ago.")
        ] = None,
        newer_than_s: Annotated[
            float | None, Query(ge=0, le=10**9, description="Created at most this long ago.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None,
            Query(
                pattern=CURSOR_PATTERN.pattern,
                description="Where to go on: the next_cursor of the page before (opaque to "
                "you; any other value is a 422).",
            ),
        ] = None,
    ) -> PageOut:
        if status is not None and status not in STATUSES:
            raise invalid(("query", "status"), f"status must be one of {', '.join(STATUSES)}")
        where = ListFilter(status, mode, participant, gid_prefix, older_than_s, newer_than_s)
        try:
            page = await coord(request).store.page(where, limit, cursor)
        except ValueError as e:
            raise invalid(("query", "cursor"), str(e)) from e
        return PageOut(items=[to_out(r) for r in page.items], next_cursor=page.next_cursor)

    async def intervene(
        request: Request, gid: str, act: Act, body: NoteIn, branch: int | None = None
    ) -> TxnOut:
        c = coord(request)
        by = getattr(request.state, "token", None) or "anonymous (TXN_INSECURE_NO_AUTH)"
        try:
            note = check_note(body.note)
        except ValueError as e:
            raise invalid(("body", "note"), str(e)) from e
        try:
            await c.intervene(gid, act, by, note, branch)
        except Refusal as e:
            raise HTTPException(e.status, detail=e.detail) from e
        return await read_out(c, gid)

    refusals: dict[int | str, dict[str, Any]] = {
        404: {"description": "No such transaction (or branch)."},
        409: {"description": "Not allowed in the transaction's state; the detail says why."},
        **LOG_DOWN,
    }

    @app.post(
        "/v1/transactions/{gid}/retry",
        response_model=TxnOut,
        responses=refusals,
        tags=["operator"],
        summary="Drive a live transaction again now, its backoff cleared (admin)",
    )
    async def retry(
        request: Request, gid: Annotated[str, Path(pattern=GID_PATTERN.pattern)], body: NoteIn
    ) -> TxnOut:
        """Refused (409) on a finished transaction, or while a driver holds it."""
        return await intervene(request, gid, Act.RETRY, body)

    @app.post(
        "/v1/transactions/{gid}/abort",
        response_model=TxnOut,
        responses=refusals,
        tags=["operator"],
        summary="Abort a 2PC before its commit decision, or compensate a running saga (admin)",
    )
    async def abort(
        request: Request, gid: Annotated[str, Path(pattern=GID_PATTERN.pattern)], body: NoteIn
    ) -> TxnOut:
        """Refused (409) after a commit decision, while already aborting or compensating, and
        on a finished transaction."""
        return await intervene(request, gid, Act.ABORT, body)

    @app.post(
        "/v1/transactions/{gid}/branches/{idx}/resolve",
        response_model=TxnOut,
        responses=refusals,
        tags=["operator"],
        summary="Declare a saga branch compensated by hand (admin)",
    )
    async def resolve_branch(
        request: Request,
        gid: Annotated[str, Path(pattern=GID_PATTERN.pattern)],
        idx: Annotated[int, Path(ge=0, lt=wire.MAX_BRANCHES)],
        body: NoteIn,
    ) -> TxnOut:
        """For a compensating saga whose branch's compensation keeps failing (its last error
        says why): the saga stops compensating it and finishes aborted, marked resolved by
        hand. Refused (409) while a driver holds it, and for 2PC transactions."""
        return await intervene(request, gid, Act.RESOLVE, body, idx)

    @app.post(
        wire.RESOLVE_PATH,
        tags=["participants"],
        summary="A participant's doubt resolver asks what became of a gid",
        responses=SIGNED_REFUSALS,
        openapi_extra=question_body({"gid": GID_SCHEMA}),
    )
    async def resolve(request: Request) -> Response:
        """For participants only: a call signed with the participant's secret (headers
        Txn-Participant, Txn-Timestamp, Txn-Signature), body ``{"gid", "nonce"}``. The answer,
        ``{"gid", "participant", "nonce", "status"}`` with ``status`` "unknown" for a gid never
        logged, is signed with the same secret. Asked about a 2PC transaction still
        preparing whose owner's lease ran out, the coordinator decides abort first."""
        c = coord(request)
        asked = await _participant_question(c, request, wire.RESOLVE_PATH, "gid")
        if isinstance(asked, Response):
            return asked
        name, secrets, body = asked
        gid = body["gid"]
        record = await c.store.get(gid)
        status = "unknown" if record is None else (await c.resolve_doubt(record)).status
        return _signed(
            secrets, {"gid": gid, "participant": name, "nonce": body["nonce"], "status": status}
        )

    @app.post(
        wire.ENDED_PATH,
        tags=["participants"],
        summary="A participant's barrier retention asks which gids ended, and how long ago",
        responses=SIGNED_REFUSALS,
        openapi_extra=question_body(
            {
                "gids": {
                    "type": "array",
                    "items": GID_SCHEMA,
                    "minItems": 1,
                    "maxItems": MAX_ENDED_GIDS,
                }
            }
        ),
    )
    async def ended(request: Request) -> Response:
        """For participants only, signed as for ``/v1/resolve``; body ``{"gids": [...],
        "nonce"}`` (at most 1000 gids). The signed answer ``{"participant", "nonce", "ended",
        "retention_s"}`` maps each gid that ended (committed or aborted) to the seconds since
        its outcome was logged, and each gid this log does not hold to null (never logged, or
        deleted by retention, which keeps finished transactions ``retention_s``); a live gid
        is left out. Nothing is changed."""
        c = coord(request)
        asked = await _participant_question(c, request, wire.ENDED_PATH, "gids")
        if isinstance(asked, Response):
            return asked
        name, secrets, body = asked
        answer = await c.store.ended(list(dict.fromkeys(body["gids"])))
        content = {
            "participant": name,
            "nonce": body["nonce"],
            "ended": answer,
            "retention_s": c.settings.retention.total_seconds(),
        }
        return _signed(secrets, content)

    return app


MAX_ENDED_GIDS = 1000


async def _participant_question(
    c: Coordinator, request: Request, path: str, field: str
) -> tuple[str, list[bytes], dict[str, Any]] | Response:
    """A participant's signed question: (its name, its secrets, the body) once the body holds
    a valid ``nonce`` and ``field`` (one gid, or for "gids" a list of them) and the signature
    verifies; else the refusal to answer."""
    raw = await request.body()
    name = request.headers.get(wire.H_PARTICIPANT, "")
    secrets = c.settings.secrets_of(name) if name in c.settings.participants else []
    if not secrets:
        return _refusal(401, f"header {wire.H_PARTICIPANT} must name a participant with a secret")
    try:
        body = orjson.loads(raw)
        asked, nonce = body[field], body["nonce"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return _refusal(422, f'body must be {{"{field}": ..., "nonce": ...}}')
    gids = asked if field == "gids" else [asked]
    if not isinstance(gids, list) or not 0 < len(gids) <= MAX_ENDED_GIDS:
        return _refusal(422, f"gids must be a list of 1 to {MAX_ENDED_GIDS} gids")
    if not all(isinstance(g, str) and wire.valid_gid(g) for g in gids):
        return _refusal(422, "gid malformed")
    if not wire.valid_nonce(nonce):
        return _refusal(422, "nonce malformed")
    gid = asked if field == "gid" else ""
    op = path.rsplit("/", 1)[-1]
    why = wire.check_call(secrets, request.headers, path, name, gid, None, op, raw)
    if why is not None:
        log.warning("refused a question (%s) from %s: %s", op, name, why)
        return _refusal(401, why)
    return name, secrets, body


GID_SCHEMA = {"type": "string", "pattern": GID_PATTERN.pattern}
LOG_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"description": "The log is unavailable; retry."},
}
SIGNED_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not signed with the named participant's secret."},
    422: {"description": "The body is not the question's."},
    **LOG_DOWN,
}
SUBMIT_422 = (
    "The body or `wait` does not validate: the schema's rules, and those it cannot state "
    "(see the body's description), each naming the field."
)
SUBMIT_503 = (
    "The log, or the catalogue of a participant the body names, cannot be read; retry "
    "(with the same gid)."
)
LIST_422 = (
    "A filter does not validate, or `cursor` is not a next_cursor this API returned (the "
    "cursor is opaque: pass it back as it came)."
)


def question_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a participant's signed question (read raw by the route,
    which must check the signature over the exact bytes)."""
    properties = {**fields, "nonce": {"type": "string", "pattern": wire.NONCE_PATTERN.pattern}}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _signed(secrets: list[bytes], answer: dict[str, Any]) -> Response:
    content = orjson.dumps(answer)
    signature = wire.sign_reply(secrets[0], content)
    return Response(content, media_type="application/json", headers={wire.H_SIGNATURE: signature})


def _refusal(status: int, detail: str) -> Response:
    return problems.response(status, {"detail": detail})
