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

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from txn_devstack.faults import KINDS, FaultError, Injector
from txn_devstack.postgres import free_port

MAX_HOLD_S = 600.0
MAX_BODY_BYTES = 64 * 1024


class FaultControl:
    """A loopback HTTP endpoint in a thread of the ``txn dev`` process (the standard library's
    threaded server: one thread per request, so a held fault does not block the listing)."""

    def __init__(self, injector: Injector, port: int | None = None) -> None:
        self.injector = injector
        self.port = port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/faults":
                    return self._answer(404, {"detail": "not found: GET /faults"})
                targets = {k: control.injector.targets(k) for k in KINDS}
                self._answer(200, {"kinds": targets})

            def do_POST(self) -> None:
                if self.path != "/faults":
                    return self._answer(404, {"detail": "not found: POST /faults"})
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    return self._answer(413, {"detail": "the body is too large"})
                status, body = control.inject(self.rfile.read(length))
                self._answer(status, body)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the fault log is the injector's

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def inject(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """(status, body) for one POST /faults."""
        try:
            body: Any = json.loads(raw)
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
        done = self.injector.inject(kind, target, float(hold))
        if done is None:
            return _error(409, f"{target} is already under a fault; try again when it is over")
        detail = {"kind": done.kind, "target": done.target, "hold_s": done.hold_s}
        return 200, {**detail, "detail": done.detail}


def _error(status: int, detail: str) -> tuple[int, dict[str, Any]]:
    return status, {"detail": detail}
