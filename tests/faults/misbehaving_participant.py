"""A participant that answers badly, for the tests: run as
``python tests/faults/misbehaving_participant.py PORT``. Each prepare path misbehaves its own
way; rollbacks are acknowledged so that aborted transactions can finish."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def non_json_500(_request: web.Request) -> web.Response:
    return web.Response(status=500, text="<html>oops</html>", content_type="text/html")


async def redirect(_request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})


async def teapot(_request: web.Request) -> web.Response:
    return web.Response(status=418, text="short and stout")


async def huge_409(_request: web.Request) -> web.Response:
    return web.Response(status=409, text='{"reason": "' + "x" * (8 * 1024 * 1024) + '"}')


async def trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    await response.prepare(request)
    for _ in range(600):  # one byte a second for ten minutes, unless the client gives up
        await response.write(b" ")
        await asyncio.sleep(1)
    return response


async def ok(_request: web.Request) -> web.Response:
    return web.json_response({"rolled_back": True})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    app = web.Application()
    app.add_routes(
        [
            web.post("/non-json-500", non_json_500),
            web.post("/redirect", redirect),
            web.post("/teapot", teapot),
            web.post("/huge-409", huge_409),
            web.post("/trickle", trickle),
            web.post("/txn/2pc/rollback", ok),
            web.get("/healthz", healthz),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
