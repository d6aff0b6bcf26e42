"""The wire protocol's headers and signature, shared by the coordinator and the SDK."""

from __future__ import annotations

import hashlib
import hmac
import re

GID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_BRANCHES = 64

H_GID = "Txn-Gid"
H_BRANCH = "Txn-Branch"
H_OP = "Txn-Op"
H_SIGNATURE = "Txn-Signature"

COMMIT_PATH = "/txn/2pc/commit"
ROLLBACK_PATH = "/txn/2pc/rollback"


def sign(secret: str, gid: str, branch: int, op: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(f"{gid}\n{branch}\n{op}\n".encode())
    mac.update(body)
    return mac.hexdigest()


def verify(secret: str, gid: str, branch: int, op: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, gid, branch, op, body), signature)


def xid(gid: str, branch: int) -> str:
    """The prepared transaction's name; the gid pattern keeps it quote-free and under 200 bytes."""
    if not GID_PATTERN.match(gid) or not 0 <= branch < MAX_BRANCHES:
        raise ValueError(f"invalid gid/branch {gid!r}/{branch!r}")
    return f"txn:{gid}:{branch}"
