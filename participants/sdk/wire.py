"""The wire protocol between the coordinator and its participants: headers, the request and
reply signatures, and the names both sides build. It belongs to the SDK: the coordinator
imports it, never the reverse.

A call is signed with the participant's own secret (HMAC-SHA256) over its method, logical path
(the branch operation's path as the participant declares it), the participant's name, gid,
branch, op, a timestamp and the body. Binding the name and path means a call captured on one
participant or endpoint is refused by any other; the timestamp bounds a replay to the receiver's
window (the barrier makes a replay inside it harmless). A reply that decides something (the
coordinator's answer to a doubt resolver, a participant's catalogue) is signed too, over its
body, which echoes the asker's nonce: an old answer cannot be replayed for a new question.

Each side holds one or two secrets per peer: it signs with the first and accepts any
(docs/security.md, "Rotating a participant's secret").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _random
import time
from collections.abc import Mapping, Sequence

# A gid starts with a letter or digit: no "." or ".." path segment, no leading "-". Checked
# with fullmatch (the anchors are for pydantic and FastAPI, which search).
GID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_BRANCHES = 64

H_GID = "Txn-Gid"
H_BRANCH = "Txn-Branch"
H_OP = "Txn-Op"
H_TIMESTAMP = "Txn-Timestamp"
H_PARTICIPANT = "Txn-Participant"
H_SIGNATURE = "Txn-Signature"

COMMIT_PATH = "/txn/2pc/commit"
ROLLBACK_PATH = "/txn/2pc/rollback"
# The participant's signed list of the branch operations it serves (POST, body {"nonce"}).
CATALOGUE_PATH = "/txn/catalogue"
# The coordinator's answer to a doubt resolver (POST, body {"gid", "nonce"}).
RESOLVE_PATH = "/v1/resolve"
# The coordinator's answer to a participant's barrier retention (POST, body {"gids", "nonce"}).
ENDED_PATH = "/v1/ended"

REPLAY_WINDOW_S = 300.0

_BRANCH = re.compile(r"[0-9]{1,2}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
NONCE_PATTERN = re.compile(rf"^{_NONCE.pattern}$")  # for JSON schemas: anchored


def valid_gid(gid: str) -> bool:
    return GID_PATTERN.fullmatch(gid) is not None


def parse_branch(raw: str) -> int | None:
    """The branch index from its header (ASCII digits only), or None."""
    if _BRANCH.fullmatch(raw) is None or int(raw) >= MAX_BRANCHES:
        return None
    return int(raw)


def valid_nonce(nonce: object) -> bool:
    return isinstance(nonce, str) and _NONCE.fullmatch(nonce) is not None


def new_nonce() -> str:
    return _random.token_urlsafe(18)


def _mac(secret: bytes, parts: Sequence[str], body: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update("\n".join(("txn-call-v1", *parts, "")).encode())
    mac.update(body)
    return mac.hexdigest()


def sign(
    secret: bytes,
    method: str,
    path: str,
    participant: str,
    gid: str,
    branch: int | None,
    op: str,
    timestamp: str,
    body: bytes,
) -> str:
    branch_text = "" if branch is None else str(branch)
    return _mac(secret, (method, path, participant, gid, branch_text, op, timestamp), body)


def signed_headers(
    secret: bytes,
    path: str,
    participant: str,
    gid: str,
    branch: int | None,
    op: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The headers of a signed POST: timestamp and signature (the caller adds gid, branch, op)."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        H_TIMESTAMP: timestamp,
        H_SIGNATURE: sign(secret, "POST", path, participant, gid, branch, op, timestamp, body),
    }


def check_call(
    secrets: Sequence[bytes],
    headers: Mapping[str, str],
    path: str,
    participant: str,
    gid: str,
    branch: int | None,
    op: str,
    body: bytes,
    window_s: float = REPLAY_WINDOW_S,
    now: float | None = None,
) -> str | None:
    """Why a signed POST is refused, or None when it verifies. ``headers`` by lower-case name."""
    timestamp = headers.get(H_TIMESTAMP.lower(), "")
    signature = headers.get(H_SIGNATURE.lower(), "")
    if not signature:
        return f"header {H_SIGNATURE} is missing: calls must be signed"
    if _SIGNATURE.fullmatch(signature) is None:
        return f"header {H_SIGNATURE} must be 64 lower-case hex digits"
    if _TIMESTAMP.fullmatch(timestamp) is None:
        return f"header {H_TIMESTAMP} must be the Unix time in whole seconds"
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > window_s:
        return f"header {H_TIMESTAMP} is {skew:.0f} s away from this server's clock"
    for secret in secrets:
        expected = sign(secret, "POST", path, participant, gid, branch, op, timestamp, body)
        if hmac.compare_digest(expected, signature):
            return None
    return (
        f"header {H_SIGNATURE} does not verify: wrong secret, or signed for another "
        "participant, path, branch or body"
    )


def sign_reply(secret: bytes, body: bytes) -> str:
    return _mac(secret, ("reply",), body)


def check_reply(secrets: Sequence[bytes], body: bytes, signature: str) -> bool:
    if _SIGNATURE.fullmatch(signature) is None:
        return False
    return any(hmac.compare_digest(sign_reply(s, body), signature) for s in secrets)


def xid(gid: str, branch: int) -> str:
    """The prepared transaction's name; the gid pattern keeps it quote-free and under 200 bytes."""
    if not valid_gid(gid) or not 0 <= branch < MAX_BRANCHES:
        raise ValueError(f"invalid gid/branch {gid!r}/{branch!r}")
    return f"txn:{gid}:{branch}"
