"""``txn bench --console N``: how long the console's pages take with ``N`` finished
transactions in the log, against the same pages on the log as it was, in one run.

Each page is fetched once to warm up, then 7 times; the figure is the median round trip. The
ratio is with-history / before for each page; the history is removed again afterwards."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookieJar
from typing import Any

from txn_bench import growth
from txn_client.http11 import Client

PROBE = "console-probe-"  # one finished transaction, there before and with the history
PAGES = (
    ("overview", "/console"),
    ("list", "/console/transactions?refresh=0"),
    ("list, one participant", "/console/transactions?participant={participant}&refresh=0"),
    ("list, status matching nothing recent", "/console/transactions?status=aborting&refresh=0"),
    ("list, gid prefix", "/console/transactions?gid={prefix}1234&refresh=0"),
    ("one transaction", "/console/transactions/{probe}1"),
    ("participants", "/console/participants"),
)


TIMEOUT_S = 300.0  # one request's bound
PAGE_CAP = 64 * 1024 * 1024  # a page, whole


def _sign_in(url: str, token: str) -> str:
    """The console's session cookie, as a Cookie header. The product's HTTP client has no
    cookies or forms (nor shows a reply's headers): the standard library signs in, in a
    thread."""
    jar = CookieJar()  # accepts a cookie from an IP address, as the console's is
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # straight to the console, whatever *_proxy says
        urllib.request.HTTPCookieProcessor(jar),
    )
    form = urllib.parse.urlencode({"token": token}).encode()
    try:  # a 303 to the console, with the cookie; followed
        with opener.open(f"{url}/console/login", data=form, timeout=TIMEOUT_S) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as e:  # a 4xx or 5xx: no cookie
        with e:
            status = e.code
    probe = urllib.request.Request(f"{url}/console")
    jar.add_cookie_header(probe)
    cookie = probe.get_header("Cookie")
    if not cookie:
        raise RuntimeError(f"console sign-in failed: HTTP {status}")
    return cookie


async def _times(client: Client, url: str, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        samples = []
        for i in range(8):
            started = time.perf_counter()
            reply = await client.call("GET", url + path, TIMEOUT_S)
            if reply.status != 200:
                raise RuntimeError(f"{path}: HTTP {reply.status}")
            if reply.truncated:
                raise RuntimeError(f"{path}: over {PAGE_CAP} bytes")
            if i:  # the first is the warm-up
                samples.append((time.perf_counter() - started) * 1000)
        out.append(statistics.median(samples))
    return out


async def pages(
    url: str, token: str, log_dsn: str, participant: str, rows: int, say: Callable[[str], Any]
) -> list[dict[str, Any]]:
    paths = [
        p.format(participant=participant, prefix=growth.HISTORY_PREFIX, probe=PROBE)
        for _, p in PAGES
    ]
    await growth.fill(log_dsn, 1, PROBE)
    try:
        cookie = await asyncio.to_thread(_sign_in, url, token)
        # Pages over one keep-alive connection, the session cookie on each.
        client = Client(limit=1, cap=PAGE_CAP, headers={"Cookie": cookie})
        try:
            before = await _times(client, url, paths)
            say(f"console: adding {rows} finished transactions to the log")
            await growth.fill(log_dsn, rows)
            with_history = await _times(client, url, paths)
        finally:
            await client.close()
    finally:
        await growth.unfill(log_dsn)
        await growth.unfill(log_dsn, PROBE)
    results = []
    say(f"{'page':40s} {'before ms':>10s} {'with ' + str(rows):>12s} {'ratio':>7s}")
    for (name, _), b, w in zip(PAGES, before, with_history, strict=True):
        say(f"{name:40s} {b:10.1f} {w:12.1f} {w / b:7.2f}")
        results.append({"page": name, "before_ms": b, "with_history_ms": w, "rows": rows})
    return results
