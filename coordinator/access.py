"""Who may do what on the coordinator's API: the route policy of its guard (token scopes), the
admission limit on submissions, the checks that refuse an insecure start, and the OpenAPI
document's security scheme. The guard itself (``participants.sdk.guard``) is the one outer
layer every request passes, in front of the submission's fast path and every route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.settings import Settings
from participants.sdk import wire
from participants.sdk.guard import OPEN, Policy, Rule, refuse

SUBMIT_PATH = "/v1/transactions"
ACTIONS = ("/retry", "/abort", "/resolve")  # the last segments of the operators' POSTs
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPS_PATHS = frozenset({"/readyz", "/metrics"})
SCHEME = "bearerAuth"
CONSOLE = "/console"


# Participants' questions: signed with the participant's secret instead of a token.
SIGNED_PATHS = frozenset({wire.RESOLVE_PATH, wire.ENDED_PATH})


def policy(settings: Settings) -> Policy:
    """(method, path) -> what the request needs. Anything not listed needs ``admin``."""
    no_auth = settings.insecure_no_auth

    def rule(method: str, path: str) -> Rule:
        if path == "/healthz":
            return OPEN
        if path == CONSOLE or path.startswith(CONSOLE + "/"):
            # Signed in by its own session cookie and CSRF token (coordinator/console).
            return OPEN
        if path in SIGNED_PATHS:
            # Authenticated by the participant's signature, checked by the route.
            return Rule(None, json=True)
        if no_auth:
            return Rule(None, json=True)
        if path in OPS_PATHS:
            return OPEN if settings.open_metrics else Rule("metrics")
        if path in DOC_PATHS:
            return OPEN if settings.open_docs else Rule("read")
        if path == SUBMIT_PATH and method == "POST":
            return Rule("submit", json=True)
        if path.startswith(SUBMIT_PATH) and method in ("GET", "HEAD"):
            return Rule("read")
        # An operator's action takes a JSON note; anything else the router answers (404, or
        # 405 with the methods the path has), after the admin token.
        return Rule("admin", json=method == "POST" and path.endswith(ACTIONS))

    return rule


class Admission:
    """429 with ``Retry-After`` for a submission while this instance drives ``limit``
    transactions already: refused before anything is logged, so a flood cannot grow the log or
    the drivers' memory without bound."""

    def __init__(self, app: ASGIApp, in_flight: Callable[[], int], limit: int) -> None:
        self.app = app
        self.in_flight = in_flight
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == SUBMIT_PATH
            and self.in_flight() >= self.limit
        ):
            await refuse(
                send,
                429,
                f"this coordinator drives {self.limit} transactions already "
                "(TXN_MAX_IN_FLIGHT); retry later (with the same gid)",
                {"Retry-After": "1"},
            )
            return
        await self.app(scope, receive, send)


def startup_problems(settings: Settings) -> list[str]:
    """Why this configuration must not serve, each naming the setting to fix."""
    problems = []
    if not settings.insecure_no_auth and not settings.api_tokens:
        problems.append(
            "TXN_API_TOKENS is empty: nobody could use the API. Create a token with "
            "`txn token --name NAME --scopes submit,read` and configure its entry "
            "(or set TXN_INSECURE_NO_AUTH=true on a trusted test network)"
        )
    unsigned = settings.unsigned_participants()
    if unsigned and not settings.insecure_unsigned:
        problems.append(
            f"no secret for participant(s) {', '.join(unsigned)} in TXN_PARTICIPANT_SECRETS: "
            "their calls could not be signed (or set TXN_INSECURE_UNSIGNED=true on a trusted "
            "test network)"
        )
    return problems


def secure_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer scheme on every operation but the open and the signed ones."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`txn token`); scopes: submit, read, admin, metrics.",
    }
    schema["security"] = [{SCHEME: []}]
    for path, operations in schema.get("paths", {}).items():
        if path == "/healthz" or path in SIGNED_PATHS:
            for operation in operations.values():
                operation["security"] = []
    return schema
