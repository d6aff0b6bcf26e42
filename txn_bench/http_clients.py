"""Benchmark the product's lean client (txn_client/http11.py) against httpx and aiohttp,
for the calls the product makes (a signed JSON POST and its small JSON reply) over loopback.

Runs a tiny FastAPI app under uvicorn in a subprocess; a minimal raw asyncio keep-alive client
is measured as an upper reference. Reports requests per second, latency, and the client
process's CPU per request (the figure docs/decisions.md's "One HTTP client" rests on).
Needs the dev extra (httpx, aiohttp). Usage:
.venv/bin/python txn_bench/http_clients.py [--duration 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import orjson
from fastapi import FastAPI
from pydantic import BaseModel

from txn_client.http11 import Client, Origin

HOST = "127.0.0.1"
PATH = "/txn/prepare"
REQUEST_TIMEOUT_S = 10.0
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
BASE_HEADERS = {"Content-Type": "application/json", "Txn-Op": "prepare"}

app = FastAPI()


class PrepareBody(BaseModel):
    gid: str
    branch: str
    op: str
    payload: dict[str, int]


@app.post(PATH)
async def prepare(body: PrepareBody) -> dict[str, bool]:
    return {"ok": True}


Send = Callable[[bytes, dict[str, str]], Awaitable[int]]  # (body, headers) -> HTTP status
MakeSender = Callable[[], Awaitable[Send]]  # called once per worker task
ClientFactory = Callable[[int], AbstractAsyncContextManager[MakeSender]]  # port -> client


def shared(send: Send) -> MakeSender:
    async def make() -> Send:
        return send

    return make


@contextlib.asynccontextmanager
async def httpx_client(port: int, limits: httpx.Limits) -> AsyncIterator[MakeSender]:
    url = f"http://{HOST}:{port}{PATH}"
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            return (await client.post(url, content=body, headers=headers)).status_code

        yield shared(send)


@contextlib.asynccontextmanager
async def aiohttp_client(port: int) -> AsyncIterator[MakeSender]:
    url = f"http://{HOST}:{port}{PATH}"
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        yield shared(send)


@contextlib.asynccontextmanager
async def lean_client(port: int) -> AsyncIterator[MakeSender]:
    client = Client(limit=64)
    origin = Origin("http", HOST, port)
    try:

        async def send(body: bytes, headers: dict[str, str]) -> int:
            status, _ = await client.post(origin, PATH, headers, body, REQUEST_TIMEOUT_S)
            return status

        yield shared(send)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[MakeSender]:
    """One keep-alive connection per task; only handles Content-Length responses."""
    writers: list[asyncio.StreamWriter] = []

    async def make() -> Send:
        reader, writer = await asyncio.open_connection(HOST, port)
        writers.append(writer)

        async def send(body: bytes, headers: dict[str, str]) -> int:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head = (
                f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            length = next(ln for ln in lines if ln.lower().startswith(b"content-length:"))
            await reader.readexactly(int(length[15:]))
            return int(lines[0].split()[1])

        return send

    try:
        yield make
    finally:
        for w in writers:
            w.close()


CLIENTS: dict[str, ClientFactory] = {
    # httpx's defaults: 100 connections, only 20 of them kept alive between requests
    "httpx (default limits)": lambda port: httpx_client(
        port, httpx.Limits(max_connections=100, max_keepalive_connections=20)
    ),
    # with max_connections only, the keep-alive pool is unbounded up to 64
    "httpx (max_connections=64)": lambda port: httpx_client(port, httpx.Limits(max_connections=64)),
    "aiohttp (limit=64)": aiohttp_client,
    "lean http11 (limit=64)": lean_client,
}
RAW = "raw asyncio (reference)"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float  # this (client) process's CPU per completed request


async def measure(
    factory: ClientFactory, port: int, concurrency: int, warmup: float, duration: float
) -> Result:
    latencies: list[float] = []
    errors = 0
    cpu_start = cpu_end = 0.0
    async with factory(port) as make:
        senders = [await make() for _ in range(concurrency)]
        t_measure = time.perf_counter() + warmup
        t_end = t_measure + duration
        last_done = t_measure

        async def worker(idx: int) -> None:
            nonlocal errors, last_done
            send, n = senders[idx], 0
            while (start := time.perf_counter()) < t_end:
                n += 1
                gid, branch = f"gid-{idx:04d}-{n:010d}", f"b{idx}"
                payload = {"account": 42, "amount": 1000, "version": n}
                body = orjson.dumps(
                    {"gid": gid, "branch": branch, "op": "prepare", "payload": payload}
                )
                headers = {**BASE_HEADERS, "Txn-Gid": gid, "Txn-Branch": branch}
                try:
                    ok = await send(body, headers) == 200
                except Exception:
                    ok = False
                done = time.perf_counter()
                if start >= t_measure:  # warm-up requests are discarded
                    if ok:
                        latencies.append(done - start)
                    else:
                        errors += 1
                    last_done = max(last_done, done)

        async def cpu_marks() -> None:
            nonlocal cpu_start, cpu_end
            await asyncio.sleep(max(t_measure - time.perf_counter(), 0))
            cpu_start = time.process_time()
            await asyncio.sleep(max(t_end - time.perf_counter(), 0))
            cpu_end = time.process_time()

        tasks = asyncio.gather(cpu_marks(), *(worker(i) for i in range(concurrency)))
        await asyncio.wait_for(tasks, warmup + duration + 3 * REQUEST_TIMEOUT_S)  # hard bound
    rps = len(latencies) / max(last_done - t_measure, duration)
    lat = sorted(latencies) or [float("nan")]
    p50, p99 = (lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 for q in (0.5, 0.99))
    cpu_us = (cpu_end - cpu_start) / max(len(latencies), 1) * 1e6
    return Result(rps, p50, p99, errors, cpu_us)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    loop = "uvloop" if HAS_UVLOOP else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    opts = f"--host {HOST} --port {port} --workers 1 --log-level warning --no-access-log"
    cmd = [sys.executable, "-m", "uvicorn", "http_clients:app", *opts.split()]
    cmd += ["--loop", loop, "--http", http, "--app-dir", str(Path(__file__).resolve().parent)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    body = {"gid": "g", "branch": "b", "op": "prepare", "payload": {}}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(f"http://{HOST}:{port}{PATH}", json=body, timeout=1.0).is_success:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not become ready in time")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def run_all(args: argparse.Namespace, port: int) -> dict[tuple[str, int], list[Result]]:
    clients = dict(CLIENTS)
    if not args.no_raw:
        clients[RAW] = raw_client
    results: dict[tuple[str, int], list[Result]] = {}
    for rep in range(args.repeats):  # interleave repeats so drift hits all clients alike
        for conc in (1, args.concurrency):
            for name, factory in clients.items():
                r = await measure(factory, port, conc, args.warmup, args.duration)
                results.setdefault((name, conc), []).append(r)
                msg = (
                    f"{r.rps:7.0f} req/s p50 {r.p50_ms:6.2f} p99 {r.p99_ms:6.2f} "
                    f"cpu {r.cpu_us:5.0f} us err {r.errors}"
                )
                print(f"  rep {rep + 1} c={conc:<3} {name:<28} {msg}", file=sys.stderr)
    return results


def report(results: dict[tuple[str, int], list[Result]]) -> None:
    med: dict[tuple[str, int], Result] = {}
    for key, rs in results.items():  # median of each column over the repeats; errors summed
        m = [
            statistics.median(c)
            for c in zip(*[(r.rps, r.p50_ms, r.p99_ms, r.cpu_us) for r in rs], strict=True)
        ]
        med[key] = Result(m[0], m[1], m[2], sum(r.errors for r in rs), m[3])
    print(
        "| client | concurrency | req/s | p50 ms | p99 ms | client CPU µs/req | errors "
        "| ratio to best client |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for conc in sorted({c for _, c in med}):
        best = max(r.rps for (n, c), r in med.items() if c == conc and n != RAW)
        for (name, c), r in med.items():
            if c == conc:
                print(
                    f"| {name} | {c} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                    f"| {r.cpu_us:.0f} | {r.errors} | {r.rps / best:.2f} |"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--concurrency", type=int, default=32, help="high concurrency level")
    ap.add_argument("--warmup", type=float, default=1.0, help="discarded seconds per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell; median reported")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw asyncio reference")
    args = ap.parse_args()
    port = free_port()
    proc = start_server(port)
    try:
        wait_ready(proc, port)
        loop_factory = None
        if HAS_UVLOOP:  # as the coordinator would get under uvicorn
            import uvloop

            loop_factory = uvloop.new_event_loop
        loop_name = "uvloop" if loop_factory else "asyncio"
        print(f"server pid {proc.pid} port {port}; client loop {loop_name}", file=sys.stderr)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(run_all(args, port))
        report(results)
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
