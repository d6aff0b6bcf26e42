"""Console sign-in: an API token is presented once; the browser then holds a signed session
cookie (HttpOnly, SameSite=Strict, Secure over TLS) naming the token by its hash, never the
token. Every request looks the hash up in the configured tokens again, so a revoked token ends
its sessions and a changed scope applies at once. Each session carries a random CSRF token that
every form posts back; a POST whose Origin is another site is refused as well.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from participants.sdk.tokens import Token, token_hash

COOKIE = "txn_console"
PATH = "/console"


@dataclass(frozen=True)
class Session:
    name: str
    scopes: frozenset[str]
    csrf: str

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class Sessions:
    def __init__(
        self, secret: str, tokens: Callable[[], Mapping[str, Token]], max_age_s: float
    ) -> None:
        # No key configured: one per process (documented: sessions do not survive a restart).
        self.signer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32), "txn-console")
        self.tokens = tokens
        self.max_age_s = max_age_s

    def sign_in(self, presented: str) -> tuple[Session, str] | None:
        """The session of a valid token and the cookie value that carries it; None if the
        token is unknown or revoked."""
        digest = token_hash(presented.strip())
        token = self.tokens().get(digest)
        if token is None:
            return None
        csrf = secrets.token_urlsafe(24)
        value = self.signer.dumps({"h": digest, "c": csrf})
        return Session(token.name, token.scopes, csrf), value

    def of(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data: Any = self.signer.loads(raw, max_age=int(self.max_age_s))
            digest, csrf = str(data["h"]), str(data["c"])
        except (BadSignature, KeyError, TypeError):
            return None
        token = self.tokens().get(digest)
        if token is None:
            return None  # revoked since: the session ends with it
        return Session(token.name, token.scopes, csrf)

    def set_cookie(self, response: Response, request: Request, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.max_age_s),
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response, request: Request) -> None:
        secure = request.url.scheme == "https"
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict", secure=secure)


def csrf_ok(session: Session, request: Request, posted: str | None) -> bool:
    """The form's CSRF token matches the session's, and the request came from this site."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin != own:
            return False
    return posted is not None and hmac.compare_digest(posted.encode(), session.csrf.encode())
