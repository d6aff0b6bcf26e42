"""The fault tools over HTTP, for a stack running in another process (``txn dev``): a small
loopback endpoint next to the stack, its URL in ``stack.json`` as ``fault_control``.

    GET  /faults                                   -> {"kinds": {kind: [target, ...]}}
    POST /faults {"kind", "target", "hold_s"}      -> 200 {"kind", "target", "hold_s", "detail"}
                                                      after the fault was injected and undone;
                                                      409 when that target is already under a
                                                      fault; 422 for an unknown kind or target.

``txn fault`` is its client.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from devstack.faults import KINDS, FaultError, Injector
from devstack.postgres import free_port

MAX_HOLD_S = 600.0


class FaultControl:
    def __init__(self, injector: Injector, port: int | None = None) -> None:
        self.injector = injector
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/faults", self._list)
        app.router.add_post("/faults", self._inject)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _list(self, _request: web.Request) -> web.Response:
        return web.json_response({"kinds": {k: self.injector.targets(k) for k in KINDS}})

    async def _inject(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            return _error(422, 'the body must be JSON: {"kind", "target", "hold_s"}')
        if not isinstance(body, dict):
            return _error(422, "the body must be a JSON object")
        kind, target, hold = body.get("kind"), body.get("target"), body.get("hold_s", 1.0)
        if not isinstance(kind, str) or not isinstance(target, str):
            return _error(422, "kind and target must be strings")
        if (
            not isinstance(hold, int | float)
            or isinstance(hold, bool)
            or not (0 <= hold <= MAX_HOLD_S)
        ):
            return _error(422, f"hold_s must be a number of seconds from 0 to {MAX_HOLD_S:.0f}")
        try:
            self.injector.check(kind, target)
        except FaultError as e:
            return _error(422, str(e))
        done = await asyncio.to_thread(self.injector.inject, kind, target, float(hold))
        if done is None:
            return _error(409, f"{target} is already under a fault; try again when it is over")
        return web.json_response(
            {"kind": done.kind, "target": done.target, "hold_s": done.hold_s, "detail": done.detail}
        )


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)
