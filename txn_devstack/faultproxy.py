"""A fault proxy: an asyncio TCP proxy on loopback in front of a participant service or a
database, with faults switched at run time (from any thread):

- ``latency_s`` / ``jitter_s``: each forwarded chunk waits that long (plus up to the jitter);
- ``mode = "reset"``: new connections are closed at once and open ones are cut;
- ``mode = "blackhole"``: connections are accepted and read, and nothing is ever answered;
- ``duplicate = True`` (HTTP only): each request is delivered twice, on two upstream
  connections; the client gets the first answer, the second is read and dropped;
- ``match`` (HTTP only): the faults apply only to requests whose request line contains it
  (e.g. ``/txn/2pc/commit`` black-holes commits and lets prepares through).

It runs its own event loop in a thread, so sync tests, async tests and the dev stack can all
use it. ``stop()`` closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass

MODES = ("pass", "reset", "blackhole")


@dataclass
class Faults:
    mode: str = "pass"
    latency_s: float = 0.0
    jitter_s: float = 0.0
    duplicate: bool = False
    match: str = ""


class FaultProxy:
    def __init__(self, target_port: int, listen_port: int, http: bool) -> None:
        self.target_port = target_port
        self.port = listen_port
        self.http = http
        self.faults = Faults()
        self.counts = {"connections": 0, "duplicated": 0, "reset": 0}
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    # -- control (any thread) ----------------------------------------------------------------

    def set(
        self,
        mode: str | None = None,
        latency_s: float | None = None,
        jitter_s: float | None = None,
        duplicate: bool | None = None,
        match: str | None = None,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if duplicate and not self.http:
            raise ValueError("duplicated delivery needs an HTTP proxy")
        f = self.faults
        self.faults = Faults(
            mode if mode is not None else f.mode,
            latency_s if latency_s is not None else f.latency_s,
            jitter_s if jitter_s is not None else f.jitter_s,
            duplicate if duplicate is not None else f.duplicate,
            match if match is not None else f.match,
        )
        if mode == "reset":
            self._loop.call_soon_threadsafe(self._cut_all)

    def heal(self) -> None:
        self.faults = Faults()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            self._cut_all()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- the proxy (its own loop) ------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            self.counts["reset"] += 1
            writer.transport.abort()

    async def _delay(self) -> None:
        f = self.faults
        if f.latency_s or f.jitter_s:
            await asyncio.sleep(f.latency_s + random.uniform(0, f.jitter_s))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        self._writers.add(writer)
        try:
            if self.faults.mode == "reset":
                self.counts["reset"] += 1
                writer.transport.abort()
                return
            if self.http:
                await self._serve_http(reader, writer)
            else:
                await self._pipe_tcp(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _black_hole(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):  # swallow everything, answer nothing
            pass

    async def _pipe_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.mode == "blackhole":
            await self._black_hole(reader)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.add(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                await self._delay()
                if self.faults.mode == "blackhole":
                    continue  # swallowed
                dst.write(data)
                await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await _read_message(reader)
                if request is None:
                    return
                f = self.faults
                line = request.split(b"\r\n", 1)[0]
                applies = not f.match or f.match.encode() in line
                if applies and f.mode == "blackhole":
                    await self._black_hole(reader)
                    return
                if applies:
                    await self._delay()
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
                    self._writers.add(upstream[1])
                first = self._exchange(upstream, request)
                if applies and f.duplicate:
                    self.counts["duplicated"] += 1
                    answer, _ = await asyncio.gather(first, self._exchange_once(request))
                else:
                    answer = await first
                writer.write(answer)
                await writer.drain()
        finally:
            if upstream is not None:
                self._writers.discard(upstream[1])
                upstream[1].close()

    async def _exchange(
        self, upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> bytes:
        up_reader, up_writer = upstream
        up_writer.write(request)
        await up_writer.drain()
        answer = await _read_message(up_reader)
        if answer is None:
            raise ConnectionError("upstream closed")
        return answer

    async def _exchange_once(self, request: bytes) -> bytes:
        conn = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            return await self._exchange(conn, request)
        finally:
            conn[1].close()


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (what our services and clients send);
    None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head + body
