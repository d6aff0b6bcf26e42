"""The participant SDK's front: a FastAPI router with one route per business path, dispatching
on the ``Txn-Op`` header to the handler registered for that op (``prepare``: the 2PC phase one;
``action``/``compensate``: a saga step and its undo; ``try``/``confirm``/``cancel``: a TCC
branch's reservation, its confirmation and its release), plus the fixed ``/txn/2pc/commit`` and
``/txn/2pc/rollback`` endpoints. The protocols themselves live in ``twopc``, ``saga`` and
``tcc``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.sdk import problems, tracing, wire
from participants.sdk.base import (
    DATABASE_ERRORS,
    BarrierHook,
    BusinessError,
    Handler,
    _Transient,
    sqlstate,
)
from participants.sdk.crash import (
    PARTICIPANT_PAUSE_POINTS,
    PARTICIPANT_POINTS,
    CrashPoints,
    PausePoint,
)
from participants.sdk.db import make_engine
from participants.sdk.guard import OPEN, Rule
from participants.sdk.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from participants.sdk.metrics import ParticipantMetrics
from participants.sdk.oneshot import OneShot
from participants.sdk.resolver import DoubtResolver
from participants.sdk.retention import BarrierRetention
from participants.sdk.settings import ParticipantSettings
from participants.sdk.sizing import engine_pool
from participants.sdk.tcc import CANCEL, CONFIRM, TRY, TccBarrier
from participants.sdk.tracing import Tracing
from participants.sdk.twopc import TwoPhase

log = logging.getLogger(__name__)

__all__ = ["BarrierHook", "BusinessError", "Handler", "Participant", "_Transient", "sqlstate"]

PREPARE, ACTION, COMPENSATE = "prepare", "action", "compensate"
# A request without Txn-Op is a prepare: the op this SDK served before sagas existed.
DEFAULT_OP = PREPARE
METRICS_PATH = "/metrics"
_LABELS = {
    PREPARE: "2PC prepare",
    ACTION: "saga action",
    COMPENSATE: "saga compensation",
    TRY: "TCC try",
    CONFIRM: "TCC confirm",
    CANCEL: "TCC cancel",
}
_CRASH_AFTER = {op: f"after_{op}_before_reply" for op in _LABELS}


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _reply(status: int, body: dict[str, Any]) -> Response:
    return problems.response(status, body)


def _unavailable(what: str, e: Exception) -> tuple[int, dict[str, Any]]:
    # Found by tests/faults/test_participant_db_crash.py: with the database down, or on a pooled
    # connection a database crash had killed, these calls used to escape as HTTP 500.
    log.warning("%s: database unavailable: %r", what, e)
    return 503, {"detail": f"{what}: database unavailable: {type(e).__name__}: {e}"}


# Header names as looked up: Starlette's headers and the ASGI fast path's both by lower case.
_GID, _BRANCH, _OP = (h.lower() for h in (wire.H_GID, wire.H_BRANCH, wire.H_OP))
# The declared kinds of branch operation (the catalogue), by the op that serves each.
KINDS = {
    PREPARE: "2pc",
    ACTION: "action",
    COMPENSATE: "compensation",
    TRY: "tcc_try",
    CONFIRM: "tcc_confirm",
    CANCEL: "tcc_cancel",
}


class Participant(TwoPhase, TccBarrier):
    """Holds the service's engine and the branch endpoints registered on it.

    ``barrier_hook`` (tests only): awaited as ``hook(op, gid, branch)`` while a call holds its
    branch's barrier key, right after writing it and before any business code, inside the
    local transaction; a test can hold a call there to race another against it."""

    def __init__(
        self,
        settings: ParticipantSettings,
        engine: AsyncEngine | None = None,
        *,
        barrier_hook: BarrierHook | None = None,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._spare = []
        self.barrier_hook = barrier_hook
        self.router = APIRouter()
        self.crash = CrashPoints(settings.crash_at, settings.crash_marker, PARTICIPANT_POINTS)
        self.pause = PausePoint(settings.pause_at, settings.pause_file, PARTICIPANT_PAUSE_POINTS)
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._one_shots: dict[tuple[str, str], OneShot] = {}
        # Saga action path -> the compensation path that undoes it (declared in the catalogue).
        self._undo: dict[str, str] = {}
        # TCC try path -> (its confirm path, its cancel path) (declared in the catalogue).
        self._tcc: dict[str, tuple[str, str]] = {}
        self._routes: dict[str, APIRoute] = {}
        self.router.add_api_route(wire.COMMIT_PATH, self._commit_endpoint, methods=["POST"])
        self.router.add_api_route(wire.ROLLBACK_PATH, self._rollback_endpoint, methods=["POST"])
        self.router.add_api_route(wire.CATALOGUE_PATH, self._catalogue_endpoint, methods=["POST"])
        self.metrics = ParticipantMetrics()
        self.tracing: Tracing | None = None  # started with the service (lifespan)
        self.router.add_api_route(METRICS_PATH, self._metrics_endpoint, methods=["GET"])

    async def _metrics_endpoint(self) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def _commit_endpoint(self, request: Request) -> Response:
        """2PC phase two: COMMIT PREPARED (idempotent)."""
        return await self._respond(wire.COMMIT_PATH, request)

    async def _rollback_endpoint(self, request: Request) -> Response:
        """2PC phase two: ROLLBACK PREPARED, or a marker where nothing was prepared."""
        return await self._respond(wire.ROLLBACK_PATH, request)

    async def _catalogue_endpoint(self, request: Request) -> Response:
        """The branch operations this participant serves, signed with its secret."""
        status, content, headers = self.catalogue_reply(request.headers, await request.body())
        kind = problems.PROBLEM_JSON if status >= 400 else problems.JSON
        return Response(content, status, headers, media_type=kind)

    def check_declarations(self) -> None:
        """Every saga action names a compensation this participant serves, every TCC try a
        confirm and a cancel (checked at start)."""
        for action, undo in self._undo.items():
            if COMPENSATE not in self._handlers.get(undo, {}):
                raise ValueError(
                    f"saga action {action} declares compensation {undo}, which has no "
                    "@sdk.compensation handler"
                )
        for tried, pair in self._tcc.items():
            for op, path in zip((CONFIRM, CANCEL), pair, strict=True):
                if op not in self._handlers.get(path, {}):
                    raise ValueError(
                        f"TCC try {tried} declares {op} {path}, which has no @sdk.tcc_{op} handler"
                    )

    def _check_security(self) -> None:
        if self.settings.secrets():
            return
        if not self.settings.insecure_unsigned:
            log.warning(
                "participant %s has no TXNP_SECRET: every branch call is refused until one is set",
                self.settings.name,
            )
            return
        log.warning(
            "INSECURE: participant %s accepts UNSIGNED branch calls (TXNP_INSECURE_UNSIGNED): "
            "anyone who reaches it can prepare, commit and roll back its branches",
            self.settings.name,
        )

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self.check_declarations()
        self._check_security()
        if self._engine is None:
            # Sized by participants.sdk.sizing, which max_connections is counted with. The
            # lock timeout is a connection setting: no SET LOCAL round trip per call.
            pool = engine_pool(self.settings.pool_size)
            self._engine = make_engine(
                self.settings.dsn.get_secret_value(),
                pool_size=pool.size,
                max_overflow=pool.overflow,
                lock_timeout_ms=self.settings.lock_timeout_ms,
            )
            self.lock_timeout_set = True
        self.tracing = tracing.start(self.settings.tracing, self.settings.name, "TXNP_TRACING")
        loops: list[asyncio.Task[None]] = []
        if self.settings.coordinators:
            loops.append(
                asyncio.create_task(
                    self.resolver().run(self.settings.resolver_interval_s), name="doubt-resolver"
                )
            )
        if self.settings.barrier_retention.total_seconds() > 0:
            loops.append(
                asyncio.create_task(
                    self.barrier_retention().run(self.settings.barrier_retention_interval_s),
                    name="barrier-retention",
                )
            )
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await self._drop_spare()
            await self._engine.dispose()
            self._engine = None
            if self.tracing is not None:
                self.tracing.shutdown()
                self.tracing = None

    def resolver(self) -> DoubtResolver:
        """The doubt resolver over this participant's prepared transactions."""
        return DoubtResolver(
            self.engine,
            self.settings.coordinators,
            self.settings.orphan_safety_s,
            self.commit,
            self.rollback,
            self.settings.name,
            self.settings.secrets(),
            metrics=self.metrics,
        )

    def barrier_retention(self) -> BarrierRetention:
        """Deletes barrier rows of transactions a coordinator confirms ended long ago."""
        s = self.settings
        return BarrierRetention(
            self.engine,
            s.coordinators,
            s.name,
            s.secrets(),
            s.barrier_retention.total_seconds(),
            s.replay_window_s,
            s.barrier_retention_batch,
            self.metrics,
        )

    # -- registration --------------------------------------------------------------------

    def twopc(self, path: str, *, one_shot: OneShot | None = None) -> Callable[[Handler], Handler]:
        """Register ``handler`` as the prepare (phase one) of a 2PC branch at ``path``.
        ``one_shot``: the handler's change as one SQL statement, so that the happy case costs
        one round trip to the database (participants/sdk/oneshot.py)."""
        return self._register(path, PREPARE, one_shot)

    def action(
        self, path: str, *, compensation: str, one_shot: OneShot | None = None
    ) -> Callable[[Handler], Handler]:
        """Register ``handler`` as a saga action (a forward step) at ``path``, undone by the
        compensation at ``compensation`` (the catalogue declares the pair; the coordinator
        refuses a saga branch that names another). ``one_shot`` as for ``twopc``."""
        if self._undo.get(path, compensation) != compensation:
            raise ValueError(f"{path} already declares compensation {self._undo[path]}")
        self._undo[path] = compensation
        return self._register(path, ACTION, one_shot)

    def compensation(self, path: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` as a saga compensation (the undo of an action) at ``path``."""
        return self._register(path, COMPENSATE)

    def tcc_try(self, path: str, *, confirm: str, cancel: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` as a TCC try (reserve the resource, commit) at ``path``,
        confirmed by the handler at ``confirm`` and cancelled by the one at ``cancel`` (the
        catalogue declares the three)."""
        if self._tcc.get(path, (confirm, cancel)) != (confirm, cancel):
            confirms, cancels = self._tcc[path]
            raise ValueError(f"{path} already declares confirm {confirms} and cancel {cancels}")
        self._tcc[path] = (confirm, cancel)
        return self._register(path, TRY)

    def tcc_confirm(self, path: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` as a TCC confirm (use what the try reserved) at ``path``."""
        return self._register(path, CONFIRM)

    def tcc_cancel(self, path: str) -> Callable[[Handler], Handler]:
        """Register ``handler`` as a TCC cancel (release what the try reserved) at ``path``."""
        return self._register(path, CANCEL)

    def _register(
        self, path: str, op: str, one_shot: OneShot | None = None
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            served = self._handlers.get(path)
            if served is None:
                served = self._handlers[path] = {}
                self._add_route(path, served)
            if op in served:
                raise ValueError(f"{path} already has a {op} handler: {served[op].__name__}")
            served[op] = handler
            if one_shot is not None:
                self._one_shots[(path, op)] = one_shot
            route = self._routes[path]
            route.summary = "; ".join(
                f"{_LABELS[o]}: {_first_line(h.__doc__) or h.__name__}" for o, h in served.items()
            )
            return handler

        return register

    def _add_route(self, path: str, served: dict[str, Handler]) -> None:
        async def endpoint(request: Request) -> Response:
            return await self._respond(path, request)

        endpoint.__name__ = "branch" + re.sub(r"[^A-Za-z0-9]+", "_", path)
        endpoint.__doc__ = (
            f"One branch call; header {wire.H_OP} chooses the handler "
            f"({', '.join(_LABELS)}; absent means {DEFAULT_OP})."
        )
        self.router.add_api_route(path, endpoint, methods=["POST"])
        route = self.router.routes[-1]
        assert isinstance(route, APIRoute)
        self._routes[path] = route

    def mount(self, app: FastAPI, *, require_token: bool = True) -> None:
        """Serve this participant's endpoints on ``app``: its routes (they show in the OpenAPI
        document) and the ASGI fast path that answers the same calls without FastAPI's
        per-request machinery (``participants.sdk.asgi``). The fast path sits outside the
        app's middleware, so branch calls skip it: they carry the coordinator's signature
        (``TXNP_SECRET``), not the app's own authentication.

        Around both sits the SDK's guard (``participants.sdk.guard``): a body limit on every
        path, and with ``require_token`` (the default) a bearer token from ``TXNP_API_TOKENS``
        on the app's own endpoints (GET needs scope read, other methods submit; ``/healthz``
        is open). Pass ``require_token=False`` when the app authenticates its own routes."""
        from participants.sdk import openapi
        from participants.sdk.asgi import BranchCalls, outermost
        from participants.sdk.guard import Guard

        app.include_router(self.router)
        problems.install(app)
        tokens = self.settings.tokens()
        open_all = not require_token or self.settings.insecure_no_auth
        openapi.install(
            app,
            lambda schema: openapi.participant_openapi(
                schema,
                {path: list(served) for path, served in self._handlers.items()},
                DEFAULT_OP,
                not open_all,
                METRICS_PATH,
            ),
        )
        if require_token and self.settings.insecure_no_auth:
            log.warning("INSECURE: %s's business endpoints need no token", self.settings.name)

        def policy(method: str, path: str) -> Rule:
            if open_all or path == "/healthz" or self.serves(path):
                return OPEN  # branch calls carry the coordinator's signature instead
            if path == METRICS_PATH:
                return Rule("metrics")
            return Rule("read" if method in ("GET", "HEAD") else "submit")

        outermost(app, lambda inner: Guard(BranchCalls(inner, self), policy, lambda: tokens))

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of this participant's signed endpoints."""
        return path in self._handlers or path in (
            wire.COMMIT_PATH,
            wire.ROLLBACK_PATH,
            wire.CATALOGUE_PATH,
        )

    def catalogue(self) -> list[dict[str, str]]:
        """The branch operations served: path, kind, for an action its compensation, for a TCC
        try its confirm and cancel."""
        out: list[dict[str, str]] = []
        for path, served in sorted(self._handlers.items()):
            for op in served:
                entry = {"path": path, "kind": KINDS[op]}
                if op == ACTION:
                    entry["compensation"] = self._undo[path]
                elif op == TRY:
                    entry["confirm"], entry["cancel"] = self._tcc[path]
                out.append(entry)
        return out

    def catalogue_reply(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        """The signed catalogue, for a signed request whose body is ``{"nonce": ...}``."""
        refused = self._verify(wire.CATALOGUE_PATH, "", None, "catalogue", headers, body)
        if refused is not None:
            return refused[0], problems.encode(*refused)[0], {}
        try:
            nonce = orjson.loads(body).get("nonce")
        except (orjson.JSONDecodeError, AttributeError):
            nonce = None
        if not wire.valid_nonce(nonce):
            detail = 'body must be {"nonce": <16-64 of [A-Za-z0-9_-]>}'
            return 422, orjson.dumps(problems.problem(422, detail)), {}
        content = orjson.dumps(
            {"participant": self.settings.name, "nonce": nonce, "operations": self.catalogue()}
        )
        signature = wire.sign_reply(self.settings.secrets()[0], content)
        return 200, content, {wire.H_SIGNATURE: signature}

    # -- request plumbing ----------------------------------------------------------------

    async def _respond(self, path: str, request: Request) -> Response:
        status, answer = await self.answer(path, request.headers, await request.body())
        return _reply(status, answer)

    async def answer(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """One call to one of this participant's endpoints, as (HTTP status, JSON body).
        ``headers``: looked up by lower-case name. Counted in the metrics; a span when
        tracing is on."""
        if self.tracing is not None:
            return await self._traced_answer(self.tracing, path, headers, body)
        return await self._answer(path, headers, body)

    async def _answer(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        if path == wire.COMMIT_PATH:
            op = "commit"
            status, answer = await self._phase_two_call("commit", headers, body)
        elif path == wire.ROLLBACK_PATH:
            op = "rollback"
            status, answer = await self._phase_two_call("rollback", headers, body)
        else:
            served = self._handlers.get(path)
            if served is None:
                return 404, {"detail": f"{path} is not a branch endpoint of this participant"}
            op = headers.get(_OP) or DEFAULT_OP
            status, answer = await self._dispatch(path, served, headers, body)
        if op not in _LABELS and op not in ("commit", "rollback"):
            op = "other"  # a label per unknown header value would grow without bound
        self.metrics.answered(op, status, answer, time.perf_counter() - started)
        return status, answer

    async def _traced_answer(
        self, tracing: Tracing, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``answer`` inside a server span continuing the caller's ``traceparent``: the
        business handler runs in it, so its own spans are children."""
        op = {wire.COMMIT_PATH: "commit", wire.ROLLBACK_PATH: "rollback"}.get(path)
        op = op or headers.get(_OP) or DEFAULT_OP
        attributes = {
            "txn.gid": headers.get(_GID, ""),
            "txn.branch": headers.get(_BRANCH, ""),
            "txn.participant": self.settings.name,
            "txn.operation": op,
            "url.path": path,
        }
        with tracing.server(f"{op} {path}", headers, attributes) as span:
            status, answer = await self._answer(path, headers, body)
            span.set_attribute("http.response.status_code", status)
            if status >= 300:
                reason = answer.get("reason") or answer.get("detail") or f"HTTP {status}"
                tracing.failed(span, str(reason))
        return status, answer

    @staticmethod
    def _op_error(path: str, op: str, served: dict[str, Handler]) -> str:
        if op in ("commit", "rollback"):
            fixed = wire.COMMIT_PATH if op == "commit" else wire.ROLLBACK_PATH
            return f"{wire.H_OP} {op!r} goes to {fixed}, not to a business path"
        if op not in _LABELS:
            return f"unknown {wire.H_OP} {op!r}: a business path serves {', '.join(_LABELS)}"
        return f"{path} has no {op} handler; it serves {wire.H_OP}: {', '.join(served)}"

    async def _dispatch(
        self, path: str, served: dict[str, Handler], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        op = headers.get(_OP) or DEFAULT_OP
        handler = served.get(op)
        if handler is None:
            return 400, {"detail": self._op_error(path, op, served)}
        parsed = self._branch_of(path, headers, body, op)
        if isinstance(parsed[0], int):
            return parsed
        gid, branch = parsed
        try:
            payload = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return 409, {"reason": "payload is not valid JSON"}
        if not isinstance(payload, dict):
            return 409, {"reason": "payload must be a JSON object"}
        try:
            if op == PREPARE:
                one_shot = self._one_shots.get((path, op))
                status, answer = await self.prepare(gid, branch, payload, handler, one_shot)
            elif op == ACTION:
                one_shot = self._one_shots.get((path, op))
                status, answer = await self.run_action(gid, branch, payload, handler, one_shot)
            else:
                run = {
                    COMPENSATE: self.run_compensation,
                    TRY: self.run_try,
                    CONFIRM: self.run_confirm,
                    CANCEL: self.run_cancel,
                }[op]
                status, answer = await run(gid, branch, payload, handler)
        except _Transient as e:
            return 503, {"detail": str(e)}
        except DATABASE_ERRORS as e:
            return _unavailable(f"{_LABELS[op]} {gid}/{branch}", e)
        if status == 200:
            self.crash.hit(_CRASH_AFTER[op])
        return status, answer

    def _branch_of(
        self, path: str, headers: Mapping[str, str], body: bytes, op: str
    ) -> tuple[str, int] | tuple[int, dict[str, Any]]:
        """(gid, branch) from the headers of a verified call, or the refusal (status, body)."""
        gid = headers.get(_GID, "")
        branch = wire.parse_branch(headers.get(_BRANCH, ""))
        if not wire.valid_gid(gid):
            return 422, {"detail": f"header {wire.H_GID} must match {wire.GID_PATTERN.pattern}"}
        if branch is None:
            return 422, {"detail": f"header {wire.H_BRANCH} must be 0..{wire.MAX_BRANCHES - 1}"}
        refused = self._verify(path, gid, branch, op, headers, body)
        return (gid, branch) if refused is None else refused

    def _verify(
        self,
        path: str,
        gid: str,
        branch: int | None,
        op: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any]] | None:
        """None when the call is signed for this participant, path, branch and body within
        the replay window (or unsigned calls are explicitly allowed); else 401 and why."""
        secrets = self.settings.secrets()
        if not secrets:
            if self.settings.insecure_unsigned:
                return None
            return 401, {
                "detail": f"participant {self.settings.name} has no secret (TXNP_SECRET) and "
                "refuses every branch call"
            }
        why = wire.check_call(
            secrets,
            headers,
            path,
            self.settings.name,
            gid,
            branch,
            op,
            body,
            self.settings.replay_window_s,
        )
        if why is None:
            return None
        context = {"gid": gid} if branch is None else {"gid": gid, "branch": branch}
        log.warning("refused a %s call to %s: %s", op, path, why, extra=context)
        return 401, {"detail": why}

    async def _phase_two_call(
        self, op: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``op``: commit or rollback."""
        path = wire.COMMIT_PATH if op == "commit" else wire.ROLLBACK_PATH
        parsed = self._branch_of(path, headers, body, op)
        if isinstance(parsed[0], int):
            return parsed
        gid, branch = parsed
        finish = self.commit if op == "commit" else self.rollback
        try:
            status, answer = await finish(gid, branch)
        except _Transient as e:
            return 503, {"detail": str(e)}
        except DATABASE_ERRORS as e:
            return _unavailable(f"2PC {op} {gid}/{branch}", e)
        if status == 200 and op == "commit":
            self.crash.hit("after_commit_before_reply")
        return status, answer
