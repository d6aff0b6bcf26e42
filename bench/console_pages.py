"""``txn bench --console N``: how long the console's pages take with ``N`` finished
transactions in the log, against the same pages on the log as it was, in one run.

Each page is fetched once to warm up, then 7 times; the figure is the median round trip. The
ratio is with-history / before for each page; the history is removed again afterwards."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from bench import growth

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


async def _times(session: aiohttp.ClientSession, url: str, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        samples = []
        for i in range(8):
            started = time.perf_counter()
            async with session.get(url + path) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{path}: HTTP {reply.status}")
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
        jar = aiohttp.CookieJar(unsafe=True)  # the console is on an IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.post(f"{url}/console/login", data={"token": token}) as reply:
                if not jar.filter_cookies(URL(f"{url}/console")):
                    raise RuntimeError(f"console sign-in failed: HTTP {reply.status}")
            before = await _times(session, url, paths)
            say(f"console: adding {rows} finished transactions to the log")
            await growth.fill(log_dsn, rows)
            with_history = await _times(session, url, paths)
    finally:
        await growth.unfill(log_dsn)
        await growth.unfill(log_dsn, PROBE)
    results = []
    say(f"{'page':40s} {'before ms':>10s} {'with ' + str(rows):>12s} {'ratio':>7s}")
    for (name, _), b, w in zip(PAGES, before, with_history, strict=True):
        say(f"{name:40s} {b:10.1f} {w:12.1f} {w / b:7.2f}")
        results.append({"page": name, "before_ms": b, "with_history_ms": w, "rows": rows})
    return results
