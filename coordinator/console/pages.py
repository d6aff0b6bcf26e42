"""The operator console's pages, server-rendered (Jinja2, autoescaped) by the coordinator:
overview, transactions (filters, keyset paging, auto-refresh), one transaction (request,
branches, timeline, the manual actions behind a confirmation that asks for the note),
participants. Signed in with an API token (read scope to look, admin to act)."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from coordinator.console import charts
from coordinator.console.session import PATH, Session, Sessions, csrf_ok
from coordinator.console.views import Views
from coordinator.intervention import Act, Refusal, check_note
from coordinator.models import STATUSES
from coordinator.records import ListFilter, TxnRecord
from coordinator.service import Coordinator
from participants.sdk.wire import GID_PATTERN

HERE = Path(__file__).parent
WINDOW_MIN = 15
AGES = {"": None, "1m": 60.0, "10m": 600.0, "1h": 3600.0, "1d": 86400.0}
PAGE = 50
ACTIONS = {
    "retry": "Drive it again now, its backoff cleared.",
    "abort": "Abort it: a 2PC rolls back every branch, a saga compensates what ran.",
    "resolve": "Declare this branch compensated by hand: the saga stops retrying its "
    "compensation and finishes aborted, marked as resolved manually.",
}


def age_text(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{math.floor(seconds / size)}{unit}"
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"


def mount(app: FastAPI, coord: Callable[[Request], Coordinator]) -> None:
    """Serve the console under /console on ``app``."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["age"] = age_text
    templates.env.filters["when"] = _when
    sessions: dict[str, Sessions] = {}
    router = APIRouter(prefix=PATH, include_in_schema=False)

    def sessions_of(request: Request) -> Sessions:
        c = coord(request)
        if "s" not in sessions:
            s = c.settings
            sessions["s"] = Sessions(
                s.console_secret.get_secret_value(), s.tokens, s.console_session_s
            )
        return sessions["s"]

    def views(request: Request) -> Views:
        engine = getattr(coord(request).store, "engine", None)
        if engine is None:
            raise RuntimeError("the console's views need the Postgres log")
        return Views(engine)

    def page(
        request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        ctx.update(request=request, session=session, path=request.url.path)
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def signed_in(request: Request) -> Session | Response:
        session = sessions_of(request).of(request)
        if session is None or not session.may("read"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{PATH}/login?{urlencode({'next': target})}", 303)
        return session

    async def form(request: Request) -> dict[str, str]:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        return {k: v[0] for k, v in fields.items()}

    @router.get("/login")
    async def login_page(request: Request, next: str = PATH) -> HTMLResponse:
        return page(request, "login.html", None, next=_local(next))

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        target = _local(fields.get("next", PATH))
        if not same_site(request):
            return page(request, "login.html", None, 403, next=target, error="cross-site sign-in")
        signed = sessions_of(request).sign_in(fields.get("token", ""))
        if signed is None:
            error = "unknown or revoked token"
            return page(request, "login.html", None, 401, next=target, error=error)
        session, cookie = signed
        if not session.may("read"):
            error = f"token {session.name!r} lacks scope 'read'"
            return page(request, "login.html", None, 403, next=target, error=error)
        response = RedirectResponse(target, 303)
        sessions_of(request).set_cookie(response, request, cookie)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = sessions_of(request).of(request)
        if session is not None and not csrf_ok(session, request, (await form(request)).get("csrf")):
            return page(request, "error.html", session, 403, error="stale or forged form")
        response = RedirectResponse(f"{PATH}/login", 303)
        Sessions.clear_cookie(response, request)
        return response

    @router.get("")
    async def overview(request: Request) -> Response:
        session = signed_in(request)
        if not isinstance(session, Session):
            return session
        c, v = coord(request), views(request)
        counts, points, attention, now = await asyncio.gather(
            v.counts(),
            v.series(WINDOW_MIN * 60),
            v.attention(c.settings.attention_age_s, c.settings.stuck_attempts, 3),
            c.store.clock(),
        )
        modes = sorted({m for _, m in counts} | {"2pc", "saga"})
        statuses = [s for s in STATUSES if any((s, m) in counts for m in modes)]
        finished = sum(p.finished for p in points)
        return page(
            request,
            "overview.html",
            session,
            counts=counts,
            modes=modes,
            statuses=statuses,
            chart=charts.throughput_chart(points, now, WINDOW_MIN),
            window_min=WINDOW_MIN,
            rate=finished / (WINDOW_MIN * 60),
            attention=attention,
            attention_age=c.settings.attention_age_s,
            refresh=5,
        )

    @router.get("/transactions")
    async def transactions(request: Request) -> Response:
        session = signed_in(request)
        if not isinstance(session, Session):
            return session
        q = request.query_params
        chosen = {k: q.get(k, "") for k in ("status", "mode", "participant", "age", "gid")}
        problems = _filter_problems(chosen, coord(request).settings.participants)
        items: list[TxnRecord] = []
        next_cursor = None
        if not problems:
            where = ListFilter(
                status=chosen["status"] or None,
                mode=chosen["mode"] or None,
                participant=chosen["participant"] or None,
                gid_prefix=chosen["gid"] or None,
                older_than_s=AGES[chosen["age"]],
            )
            try:
                found = await coord(request).store.page(where, PAGE, q.get("cursor") or None)
                items, next_cursor = found.items, found.next_cursor
            except ValueError:
                problems.append("that page's cursor is not one this console made")
        now = await coord(request).store.clock()
        refresh = 0 if q.get("refresh") == "0" else 5
        kept = {k: v for k, v in chosen.items() if v}
        return page(
            request,
            "transactions.html",
            session,
            400 if problems else 200,
            items=items,
            now=now,
            chosen=chosen,
            statuses=STATUSES,
            participants=sorted(coord(request).settings.participants),
            ages=list(AGES),
            problems=problems,
            next_link=f"?{urlencode({**kept, 'cursor': next_cursor})}" if next_cursor else None,
            refresh=refresh,
            refresh_link=f"?{urlencode({**kept, 'refresh': '0' if refresh else '5'})}",
        )

    @router.get("/transactions/{gid}")
    async def transaction(request: Request, gid: str) -> Response:
        session = signed_in(request)
        if not isinstance(session, Session):
            return session
        c = coord(request)
        record = await c.store.get(gid) if GID_PATTERN.match(gid) else None
        if record is None:
            return page(request, "error.html", session, 404, error=f"no transaction {gid}")
        events = await c.store.events(gid)
        done = request.query_params.get("done", "")
        marks = charts.timeline(
            [
                (e.at, e.kind, e.branch, orjson.dumps(e.detail).decode() if e.detail else "")
                for e in events
            ],
            record.created_at,
        )
        return page(
            request,
            "transaction.html",
            session,
            txn=record,
            marks=marks,
            request_json=orjson.dumps(record.request, option=orjson.OPT_INDENT_2).decode(),
            done=done if done in ACTIONS else "",
            deps=record.request.get("deps"),
            may_act=session.may("admin"),
        )

    @router.get("/transactions/{gid}/{action}")
    async def confirm(request: Request, gid: str, action: str) -> Response:
        session = signed_in(request)
        if not isinstance(session, Session):
            return session
        if action not in ACTIONS:
            return page(request, "error.html", session, 404, error=f"no action {action}")
        if not session.may("admin"):
            error = f"token {session.name!r} may look, not act (it lacks scope 'admin')"
            return page(request, "error.html", session, 403, error=error)
        record = await coord(request).store.get(gid) if GID_PATTERN.match(gid) else None
        if record is None:
            return page(request, "error.html", session, 404, error=f"no transaction {gid}")
        branch = request.query_params.get("branch", "")
        return page(
            request,
            "confirm.html",
            session,
            txn=record,
            action=action,
            explain=ACTIONS[action],
            branch=branch,
        )

    @router.post("/transactions/{gid}/{action}")
    async def act(request: Request, gid: str, action: str) -> Response:
        session = sessions_of(request).of(request)
        fields = await form(request)
        if session is None or not csrf_ok(session, request, fields.get("csrf")):
            return page(request, "error.html", session, 403, error="stale or forged form")
        if not session.may("admin"):
            error = f"token {session.name!r} may look, not act (it lacks scope 'admin')"
            return page(request, "error.html", session, 403, error=error)
        if action not in ACTIONS or not GID_PATTERN.match(gid):
            return page(request, "error.html", session, 404, error="no such action")
        branch_raw = fields.get("branch", "")
        branch = int(branch_raw) if re.fullmatch(r"[0-9]{1,2}", branch_raw) else None
        record = await coord(request).store.get(gid)
        try:
            note = check_note(fields.get("note", ""))
            await coord(request).intervene(gid, Act(action), session.name, note, branch)
        except (ValueError, Refusal) as e:
            status = e.status if isinstance(e, Refusal) else 422
            ctx = {"txn": record, "action": action, "explain": ACTIONS[action]}
            return page(
                request,
                "confirm.html" if record else "error.html",
                session,
                status,
                branch=branch_raw,
                error=str(e),
                **ctx,
            )
        return RedirectResponse(f"{PATH}/transactions/{gid}?{urlencode({'done': action})}", 303)

    @router.get("/participants")
    async def participants(request: Request) -> Response:
        session = signed_in(request)
        if not isinstance(session, Session):
            return session
        c = coord(request)
        names = sorted(c.settings.participants)

        async def probe(name: str) -> tuple[list[tuple[str, str]], str | None]:
            try:
                async with asyncio.timeout(3):
                    return await c.declared.probe(name)
            except TimeoutError:
                return c.declared.cached(name), "no answer within 3 s"

        probes, errors = await asyncio.gather(
            asyncio.gather(*(probe(n) for n in names)),
            views(request).participant_errors(WINDOW_MIN * 60),
        )
        rows = [
            {
                "name": n,
                "url": c.settings.participants[n],
                "operations": ops,
                "problem": problem,
                "branches": errors.get(n, (0, 0))[0],
                "failing": errors.get(n, (0, 0))[1],
            }
            for n, (ops, problem) in zip(names, probes, strict=True)
        ]
        return page(request, "participants.html", session, rows=rows, window_min=WINDOW_MIN)

    app.include_router(router)
    app.mount(f"{PATH}/static", StaticFiles(directory=str(HERE / "static")), name="console-static")


def same_site(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin in (None, "null") or origin == f"{request.url.scheme}://{request.url.netloc}"


def _local(target: str) -> str:
    """Only a path of the console itself: never an open redirect."""
    if target.startswith(PATH) and not target.startswith("//") and "\\" not in target:
        return target
    return PATH


def _filter_problems(chosen: dict[str, str], registry: dict[str, str]) -> list[str]:
    problems = []
    if chosen["status"] and chosen["status"] not in STATUSES:
        problems.append(f"status must be one of {', '.join(STATUSES)}")
    if chosen["mode"] not in ("", "2pc", "saga", "tcc"):
        problems.append("mode must be 2pc or saga")
    if chosen["participant"] and chosen["participant"] not in registry:
        problems.append(f"no participant {chosen['participant']!r} in the registry")
    if chosen["age"] not in AGES:
        problems.append(f"age must be one of {', '.join(a for a in AGES if a)}")
    if len(chosen["gid"]) > 128 or not chosen["gid"].isprintable():
        problems.append("a gid prefix is at most 128 printable characters")
    return problems


def _when(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S.%f}"[:-3]
