"""Participant transport: the one place the coordinator talks HTTP to participants.

The product's lean HTTP/1.1 client (``txn_client.http11``), chosen by measurement
(docs/decisions.md). Participants are addressed by registry name only; a name outside the
registry is a programming error here (the API refuses it first). Every call is signed with the
participant's own secret (``participants.sdk.wire``); a prepare counts as a yes vote only when
its 2xx names the prepared transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from participants.sdk import wire
from txn_client.http11 import Client, HttpError, Origin


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
        extra_headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """``extra_headers``: sent as well (the trace context when tracing is on)."""
        ...

    async def catalogue(self, participant: str) -> list[dict[str, Any]] | str:
        """The branch operations ``participant`` declares (its signed catalogue), or why they
        could not be read."""
        ...

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
    def __init__(
        self,
        registry: dict[str, str],
        timeout_s: float,
        secrets: Mapping[str, list[bytes]] | None = None,
    ) -> None:
        """``secrets``: per participant, the secrets of its signatures (the first signs); a
        participant without any is called unsigned (only with TXN_INSECURE_UNSIGNED)."""
        self.targets = {name: Origin.of(url) for name, url in registry.items()}
        self.secrets = dict(secrets or {})
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
        extra_headers: Mapping[str, str] | None = None,
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
        if extra_headers:
            headers.update(extra_headers)
        secrets = self.secrets.get(participant)
        if secrets:
            headers.update(
                wire.signed_headers(secrets[0], path, participant, gid, branch, op, body)
            )
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
            if op == "prepare" and (parsed or {}).get("prepared") != wire.xid(gid, branch):
                # Not a yes vote: whatever answered did not prepare this branch (an endpoint
                # that is no 2PC branch, a proxy's page). A failed prepare aborts cleanly.
                return Reply(
                    Kind.REFUSED,
                    status,
                    f"{participant}{path} answered {status} without naming the prepared "
                    "transaction: not a yes vote",
                    parsed,
                )
            if op == "try" and (parsed or {}).get("done") is not True:
                # Likewise a TCC try: only a reply saying it is done reserved anything.
                return Reply(
                    Kind.REFUSED,
                    status,
                    f"{participant}{path} answered {status} without saying the try is done",
                    parsed,
                )
            return Reply(Kind.OK, status, "", parsed)
        if status == 409:
            return Reply(Kind.REFUSED, status, reason, parsed)
        return Reply(Kind.TRANSIENT, status, reason, parsed)

    async def catalogue(self, participant: str) -> list[dict[str, Any]] | str:
        target = self.targets.get(participant)
        secrets = self.secrets.get(participant)
        if target is None:
            return f"participant {participant!r} is not in the registry"
        if not secrets:
            return f"participant {participant!r} has no secret: its catalogue cannot be verified"
        origin, base_path = target
        nonce = wire.new_nonce()
        body = orjson.dumps({"nonce": nonce})
        headers = {
            "Content-Type": "application/json",
            **wire.signed_headers(
                secrets[0], wire.CATALOGUE_PATH, participant, "", None, "catalogue", body
            ),
        }
        try:
            status, raw, signature = await self.client.post_signed(
                origin, base_path + wire.CATALOGUE_PATH, headers, body, self.timeout_s
            )
        except HttpError as e:
            return f"HttpError: {e}"
        if status != 200:
            return f"HTTP {status}: {_reason(status, raw)[0]}"
        if not wire.check_reply(secrets, raw, signature):
            return "the catalogue is not signed with the participant's secret"
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "the catalogue is not JSON"
        if not isinstance(answer, dict) or (answer.get("participant"), answer.get("nonce")) != (
            participant,
            nonce,
        ):
            return "the catalogue answers another question (participant name or nonce)"
        operations = answer.get("operations")
        if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
            return "the catalogue has no list of operations"
        return operations

    async def close(self) -> None:
        await self.client.close()
