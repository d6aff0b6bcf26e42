"""A participant's signed question to a coordinator (the doubt resolver's "what became of this
gid", barrier retention's "which of these ended"): signed with the participant's secret, never
following a redirect, and answered only by a body signed with the same secret that names this
participant and this question's nonce."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from participants.sdk import wire

MAX_ANSWER_BYTES = 1024 * 1024


async def ask(
    session: aiohttp.ClientSession,
    base: str,
    path: str,
    name: str,
    secrets: Sequence[bytes],
    question: dict[str, Any],
    gid: str = "",
) -> tuple[dict[str, Any] | None, str]:
    """POST ``question`` (plus a fresh nonce) to ``base + path``, signed as operation ``path``'s
    last segment for ``gid``. Returns (the verified answer, "") or (None, why not)."""
    nonce = wire.new_nonce()
    body = orjson.dumps({**question, "nonce": nonce})
    op = path.rsplit("/", 1)[-1]
    headers = {
        "Content-Type": "application/json",
        wire.H_PARTICIPANT: name,
        **wire.signed_headers(secrets[0], path, name, gid, None, op, body),
    }
    try:
        async with session.post(
            base + path, data=body, headers=headers, allow_redirects=False
        ) as reply:
            signature = reply.headers.get(wire.H_SIGNATURE, "")
            if reply.status != 200:
                return None, f"HTTP {reply.status}"
            # The whole body, however it arrives (``content.read(n)`` returns what has come so
            # far), up to a bound: a huge answer is refused, not buffered.
            raw = bytearray()
            async for chunk in reply.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    return None, f"the answer is over {MAX_ANSWER_BYTES} bytes"
    except (TimeoutError, aiohttp.ClientError) as e:
        return None, f"{type(e).__name__}: {e}"
    if not wire.check_reply(secrets, bytes(raw), signature):
        return None, "the answer is not signed with this participant's secret"
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "the answer is not JSON"
    if not isinstance(answer, dict) or (answer.get("participant"), answer.get("nonce")) != (
        name,
        nonce,
    ):
        return None, "the answer is for another question"
    return answer, ""
