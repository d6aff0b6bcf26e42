"""A participant that answers badly, for the tests: run as
``python tests/faults/misbehaving_participant.py PORT SECRET``. Each prepare path misbehaves its
own way; rollbacks are acknowledged so that aborted transactions can finish. It serves a
correctly signed catalogue (participant name ``weird``) that declares every path a 2PC
operation, so the coordinator calls them."""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web

from participants.sdk import wire

NAME = "weird"
PATHS = ("/non-json-500", "/redirect", "/teapot", "/huge-409", "/trickle", "/yes-not-prepared")


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


async def yes_not_prepared(_request: web.Request) -> web.Response:
    # A 2xx that names no prepared transaction: what any endpoint that is not a 2PC branch
    # might answer. It must not count as a yes vote.
    return web.json_response({"ok": True})


def catalogue(secret: bytes) -> web.Handler:
    async def serve(request: web.Request) -> web.Response:
        nonce = orjson.loads(await request.read())["nonce"]
        operations = [{"path": p, "kind": "2pc"} for p in PATHS]
        body = orjson.dumps({"participant": NAME, "nonce": nonce, "operations": operations})
        headers = {wire.H_SIGNATURE: wire.sign_reply(secret, body)}
        return web.Response(body=body, content_type="application/json", headers=headers)

    return serve


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
            web.post("/yes-not-prepared", yes_not_prepared),
            web.post(wire.CATALOGUE_PATH, catalogue(sys.argv[2].encode())),
            web.post("/txn/2pc/rollback", ok),
            web.get("/healthz", healthz),
        ]
    )
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
