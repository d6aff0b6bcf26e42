"""API bearer tokens: configured as hashes with a name and scopes, never stored in clear.

A token is 32 random bytes (``txn_`` + URL-safe base64); the server keeps its SHA-256 (a
random token of that length needs no salt or slow hash: nothing can be guessed from the hash).
The coordinator and the SDK's business-endpoint guard both read this format
(``TXN_API_TOKENS``, ``TXNP_API_TOKENS``): a JSON list of
``{"name": "ops", "sha256": "<64 hex>", "scopes": ["submit", "read"]}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SCOPES = ("submit", "read", "admin", "metrics")
_HASH = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        # admin may do everything.
        return scope in self.scopes or "admin" in self.scopes


def new_token() -> str:
    return "txn_" + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def token_entry(name: str, token: str, scopes: Iterable[str]) -> dict[str, Any]:
    """The configuration entry for ``token`` (what ``txn token`` prints)."""
    return {"name": name, "sha256": token_hash(token), "scopes": sorted(set(scopes))}


def parse_tokens(entries: Any) -> dict[str, Token]:
    """Configured entries → {sha256: Token}; raises ValueError naming what to fix."""
    if not isinstance(entries, list):
        raise ValueError("API tokens must be a JSON list of {name, sha256, scopes}")
    out: dict[str, Token] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"API token {i}: must be an object with name, sha256 and scopes")
        name, digest, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"API token {i}: name must be 1-64 of [A-Za-z0-9_.-]")
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise ValueError(f"API token {name!r}: sha256 must be 64 lower-case hex digits")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ValueError(f"API token {name!r}: scopes must be a non-empty subset of {SCOPES}")
        if digest in out:
            raise ValueError(f"API token {name!r}: the same token is configured twice")
        out[digest] = Token(name, frozenset(scopes))
    return out


def tokens_setting(value: Any) -> Any:
    """A settings validator's half: a JSON text (an environment variable) decoded, and every
    entry checked at start, naming what to fix."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    parse_tokens(value)
    return value


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of an ASGI request's headers; "" when the header is there but is not
    a bearer token; None when there is none."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return ""
            return token.strip()
    return None


def authorize(
    tokens: Mapping[str, Token], presented: str | None, scope: str
) -> tuple[int, str] | None:
    """None when ``presented`` may use ``scope``; else (401 or 403, what is missing)."""
    if presented is None:
        return 401, "missing credentials: send Authorization: Bearer <token>"
    if not presented:
        return 401, "the Authorization header must be: Bearer <token>"
    token = tokens.get(token_hash(presented))
    if token is None:
        return 401, "unknown or revoked token"
    if not token.allows(scope):
        have = ", ".join(sorted(token.scopes))
        return 403, f"token {token.name!r} lacks scope {scope!r} (it has: {have})"
    return None
