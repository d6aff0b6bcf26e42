"""One outer ASGI layer for what every request must pass: a bearer token with the scope its
route needs, a JSON content type on writes, and a body limit enforced while reading (for a
declared ``Content-Length`` and a chunked body alike). It sits in front of every fast path and
every route, so no path can skip it (``outermost``). The coordinator and the SDK's services
both use it, each with its own route policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from participants.sdk.problems import PROBLEM_JSON, problem
from participants.sdk.tokens import Token, authorize, bearer, token_hash

MAX_BODY_BYTES = 8 * 1024 * 1024
_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", PROBLEM_JSON.encode())


@dataclass(frozen=True)
class Rule:
    """What a route needs. ``scope``: the token scope, or None for no token (open, or
    authenticated downstream by a signature). ``json``: a write must be ``application/json``."""

    scope: str | None
    json: bool = False


OPEN = Rule(None)
Policy = Callable[[str, str], Rule]  # (method, path) -> Rule


async def send_json(
    send: Send, status: int, content: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A whole JSON response, straight to ASGI; an error's ``content`` is a problem
    (``participants.sdk.problems``), and its media type says so."""
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    kind = _PROBLEM if status >= 400 else _JSON
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [kind, (b"content-length", str(len(content)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def refuse(
    send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    await send_json(send, status, orjson.dumps(problem(status, detail)), headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        policy: Policy,
        tokens: Callable[[], Mapping[str, Token]],
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.policy = policy
        self.tokens = tokens
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        rule = self.policy(method, scope["path"])
        if rule.scope is not None:
            presented = bearer(scope["headers"])
            refused = authorize(self.tokens(), presented, rule.scope)
            if refused is not None:
                status, detail = refused
                extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                await refuse(send, status, detail, extra)
                return
            if rule.scope == "admin" and presented:
                # Who acts: an admin route records the token's name (request.state.token).
                token = self.tokens().get(token_hash(presented))
                if token is None:  # revoked between the two reads
                    await refuse(
                        send, 401, "unknown or revoked token", {"WWW-Authenticate": "Bearer"}
                    )
                    return
                scope.setdefault("state", {})["token"] = token.name
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and _header(scope, b"content-length") in (
            None,
            b"0",
        ):
            await self.app(scope, receive, send)
            return
        if rule.json and method == "POST" and not is_json(_header(scope, b"content-type")):
            await refuse(send, 415, "send the request body as Content-Type: application/json")
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await refuse(send, 413, f"request body over {self.max_body} bytes")
            return
        body = await read_body(receive, self.max_body)
        if body is None:
            await refuse(send, 413, f"request body over {self.max_body} bytes")
            return
        await self.app(scope, replay(body, receive), send)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (the rest is never
    read: a stream of any length costs at most ``limit``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the whole body at once, then whatever the server sends
    next (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
