"""``outermost`` puts a fast path outside an app's whole middleware stack, including middleware
added after it, and refuses once the app has started."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from participants.sdk.asgi import outermost, send_json
from tests.helpers import api_client

seen: list[str] = []


class Layer:
    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app, self.name = app, name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(self.name)
        if scope["type"] == "http" and self.name == "fast" and scope["path"] == "/fast":
            await send_json(send, 200, b'{"by":"fast"}')
            return
        await self.app(scope, receive, send)


async def test_the_fast_path_answers_before_middleware_added_before_or_after_it() -> None:
    app = FastAPI()
    app.add_middleware(Layer, name="before")
    outermost(app, lambda inner: Layer(inner, "fast"))
    app.add_middleware(Layer, name="after")

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        return {"by": "route"}

    async with api_client(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        seen.clear()
        assert (await c.post("/fast")).json() == {"by": "fast"}
        assert seen == ["fast"]
        seen.clear()
        assert (await c.get("/slow")).json() == {"by": "route"}
        assert seen == ["fast", "after", "before"]
    with pytest.raises(RuntimeError, match="after the application has started"):
        outermost(app, lambda inner: inner)
