"""The SDK's ASGI fast path: branch calls (prepare, saga action and compensation, TCC try,
confirm and cancel, commit, rollback) answered straight from the ASGI scope, before FastAPI's
routing, request objects and dependency machinery, which cost a participant more CPU than its
own database work did.

The same calls still have their FastAPI routes (``Participant.router``): they document the
endpoints in OpenAPI and serve them when this middleware is not installed, or when the router
is mounted under a prefix this middleware does not see. ``Participant.mount(app)`` installs
both, the fast path outside the app's whole middleware stack (``outermost``)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from participants.sdk import wire
from participants.sdk.guard import MAX_BODY_BYTES, read_body, refuse, send_json
from participants.sdk.participant import Participant
from participants.sdk.problems import encode

__all__ = ["BranchCalls", "outermost", "send_json"]


class BranchCalls:
    def __init__(self, app: ASGIApp, participant: Participant) -> None:
        self.app = app
        self.participant = participant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not self.participant.serves(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, MAX_BODY_BYTES)
        if body is None:
            await refuse(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] == wire.CATALOGUE_PATH:
            status, content, extra = self.participant.catalogue_reply(headers, body)
            await send_json(send, status, content, extra)
            return
        status, answer = await self.participant.answer(scope["path"], headers, body)
        await send_json(send, status, encode(status, answer)[0])


def outermost(app: Starlette, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put ``wrap`` around ``app``'s whole middleware stack, built when the app first serves, so
    middleware added later still goes inside it. A fast path placed there skips the error and
    exception middleware, FastAPI's telemetry and every ``add_middleware`` layer, each of
    which wraps every ``send`` of every request (8 % of a participant's CPU in the profile):
    what it answers it must answer completely, errors included."""
    if app.middleware_stack is not None:
        raise RuntimeError("cannot add an outermost layer after the application has started")
    build = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        return wrap(build())

    app.build_middleware_stack = build_wrapped  # type: ignore[method-assign]
