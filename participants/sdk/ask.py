"""A participant's signed question to a coordinator (the doubt resolver's "what became of this
gid", barrier retention's "which of these ended"): signed with the participant's secret, never
following a redirect, and answered only by a body signed with the same secret that names this
participant and this question's nonce."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from participants.sdk import wire
from txn_client.http11 import Client, HttpError

MAX_ANSWER_BYTES = 1024 * 1024


def question_client() -> Client:
    """A client for questions: a few connections per coordinator, answers up to the bound."""
    return Client(limit=4, cap=MAX_ANSWER_BYTES)


async def ask(
    client: Client,
    timeout_s: float,
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
        # Never follows a redirect: a 3xx is just not a 200.
        reply = await client.call("POST", base + path, timeout_s, headers=headers, body=body)
    except HttpError as e:
        return None, f"{type(e).__name__}: {e}"
    if reply.status != 200:
        return None, f"HTTP {reply.status}"
    if reply.truncated:  # a huge answer is refused, not buffered
        return None, f"the answer is over {MAX_ANSWER_BYTES} bytes"
    raw, signature = reply.body, reply.signature
    if not wire.check_reply(secrets, raw, signature):
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
