"""Participant transport: the one place the coordinator talks HTTP to participants.

A lean HTTP/1.1 client (``http11``), chosen by measurement (docs/decisions.md). Participants
are addressed by registry name only; a name outside the registry is a programming error here
(the API refuses it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from coordinator.http11 import Client, HttpError, Origin
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


# Only the reason is read from a reply: a participant answering with a huge body costs us
# 64 KiB, not its size.
MAX_REPLY_BYTES = 64 * 1024


class HttpTransport:
    def __init__(self, registry: dict[str, str], timeout_s: float, hmac_secret: str = "") -> None:
        self.targets = {name: Origin.of(url) for name, url in registry.items()}
        self.secret = hmac_secret
        self.timeout_s = timeout_s
        self.client = Client(limit=64, cap=MAX_REPLY_BYTES)

    async def call(
        self,
        participant: str,
        path: str,
        op: str,
        gid: str,
        branch: int,
        payload: dict[str, Any] | None,
    ) -> Reply:
        target = self.targets.get(participant)
        if target is None:
            return Reply(
                Kind.TRANSIENT, None, f"participant {participant!r} is not in the registry"
            )
        origin, base_path = target
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
            # A redirect is answered like any other status: the coordinator never follows one
            # to some other host.
            status, raw = await self.client.post(
                origin, base_path + path, headers, body, self.timeout_s
            )
        except HttpError as e:
            return Reply(Kind.TRANSIENT, None, f"HttpError: {e}")
        reason, parsed = _reason(status, raw)
        if 200 <= status < 300:
            return Reply(Kind.OK, status, "", parsed)
        if status == 409:
            return Reply(Kind.REFUSED, status, reason, parsed)
        return Reply(Kind.TRANSIENT, status, reason, parsed)

    async def close(self) -> None:
        await self.client.close()
