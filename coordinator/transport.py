"""Participant transport: the one place the coordinator talks HTTP to participants.

aiohttp was chosen by measurement (docs/decisions.md). Participants are addressed by registry
name only; a name outside the registry is a programming error here (the API refuses it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
import orjson

from participants.sdk import wire


class Kind(StrEnum):
    OK = "ok"  # 2xx: voted yes / done
    REFUSED = "refused"  # 409: definitive business failure
    TRANSIENT = "transient"  # anything else: retry


@dataclass(frozen=True)
class Reply:
    kind: Kind
    status: int | None
    reason: str
    body: dict[str, Any] | None = None


class Transport(Protocol):
    async def call(
        self,
        participant: str,
        path: str,
        op: str,
        gid: str,
        branch: int,
        payload: dict[str, Any] | None,
    ) -> Reply: ...

    async def close(self) -> None: ...


def _reason(status: int, raw: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}", None
    if isinstance(body, dict):
        text = body.get("reason") or body.get("detail")
        return (str(text) if text else f"HTTP {status}"), body
    return f"HTTP {status}", None


MAX_REPLY_BYTES = 64 * 1024


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """At most MAX_REPLY_BYTES of the body: a participant answering with a huge body costs us
    64 KiB, not its size (only the reason is read from it)."""
    raw = bytearray()
    async for chunk in resp.content.iter_chunked(8192):
        raw += chunk
        if len(raw) >= MAX_REPLY_BYTES:
            break
    return bytes(raw[:MAX_REPLY_BYTES])


class HttpTransport:
    def __init__(self, registry: dict[str, str], timeout_s: float, hmac_secret: str = "") -> None:
        self.registry = registry
        self.secret = hmac_secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def call(
        self,
        participant: str,
        path: str,
        op: str,
        gid: str,
        branch: int,
        payload: dict[str, Any] | None,
    ) -> Reply:
        base = self.registry.get(participant)
        if base is None:
            return Reply(
                Kind.TRANSIENT, None, f"participant {participant!r} is not in the registry"
            )
        body = orjson.dumps(payload if payload is not None else {})
        headers = {
            "Content-Type": "application/json",
            wire.H_GID: gid,
            wire.H_BRANCH: str(branch),
            wire.H_OP: op,
        }
        if self.secret:
            headers[wire.H_SIGNATURE] = wire.sign(self.secret, gid, branch, op, body)
        try:
            # No redirects: a participant must not send the coordinator to some other host.
            post = self._client().post(
                base + path, data=body, headers=headers, allow_redirects=False
            )
            async with post as resp:
                status = resp.status
                raw = await _read_capped(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            return Reply(Kind.TRANSIENT, None, f"{type(e).__name__}: {e}".rstrip(": "))
        reason, parsed = _reason(status, raw)
        if 200 <= status < 300:
            return Reply(Kind.OK, status, "", parsed)
        if status == 409:
            return Reply(Kind.REFUSED, status, reason, parsed)
        return Reply(Kind.TRANSIENT, status, reason, parsed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
