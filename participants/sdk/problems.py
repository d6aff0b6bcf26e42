"""Errors as RFC 9457 problem details, one shape from the coordinator, the SDK's endpoints and
the demo services: ``application/problem+json`` with ``type``, ``title``, ``status`` and
``detail``, and for a request that does not validate an ``errors`` list naming each field.

``type`` is ``about:blank`` (RFC 9457, section 4.2.1): the HTTP status says what kind of
problem it is, and ``detail`` says what to fix. Extension members carry what a caller may act
on (``repeat`` on a duplicate's refusal, for one). Decision: docs/decisions.md, "Errors".
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
# Members an answer dict may carry that the problem's own members replace.
_SAID = ("detail", "reason")


class FieldError(BaseModel):
    field: str = Field(description="Where, dotted: `body.branches.0.participant`, `query.wait`.")
    message: str
    type: str = Field(description="What kind of error, e.g. `missing`, `string_too_long`.")


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = Field("about:blank", description="Always `about:blank`: see the status.")
    title: str = Field(description="The HTTP status's phrase.")
    status: int
    detail: str = Field(description="What went wrong and what to fix, for a person.")
    errors: list[FieldError] | None = Field(
        None, description="For a request that does not validate (422): each field at fault."
    )


def title_of(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": title_of(status),
        "status": status,
        "detail": detail,
        **extra,
    }


def as_problem(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    """An error answer of the SDK's handlers (``{"reason": ...}`` or ``{"detail": ...}``, maybe
    with more members) as a problem; the other members stay as extensions."""
    said = next((answer[k] for k in _SAID if isinstance(answer.get(k), str)), None)
    extra = {k: v for k, v in answer.items() if k not in _SAID and k not in ("type", "title")}
    extra.pop("status", None)
    return problem(status, said or title_of(status), **extra)


def encode(status: int, answer: dict[str, Any]) -> tuple[bytes, str]:
    """The body and media type for an answer: a problem when ``status`` is an error."""
    if status >= 400:
        return orjson.dumps(as_problem(status, answer)), PROBLEM_JSON
    return orjson.dumps(answer), JSON


def response(
    status: int, answer: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    body, media_type = encode(status, answer)
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Where and what only: pydantic's input echo may hold a secret or undecodable bytes."""
    return [
        {
            "field": ".".join(str(part) for part in e.get("loc", ())),
            "message": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]


def validation_problem(exc: RequestValidationError) -> dict[str, Any]:
    errors = field_errors(exc)
    first = errors[0] if errors else {"field": "request", "message": "invalid"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    detail = f"{first['field']}: {first['message']}{more}"
    return problem(422, detail, errors=errors)


def install(app: FastAPI, json_bodies: bool = False) -> None:
    """Answer HTTPException and validation errors of ``app``'s routes as problems, and say so
    in its OpenAPI document (``openapi_problems``; ``json_bodies``: the guard refuses a body
    that is not ``application/json`` with 415)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else title_of(exc.status_code)
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only; a path
            # served by several routes (GET and POST /v1/transactions) has all of theirs.
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return response(exc.status_code, {"detail": detail}, headers or None)

    async def invalid(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return response(422, validation_problem(exc))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_problems(plain(), json_bodies)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


# Answered in front of every route that takes a body, whatever the route.
_EVERY_BODY = {
    400: "The body cannot be read (not UTF-8 JSON).",
    413: "The request body is over the limit.",
}
# Answered by the guard for an operation that needs a token.
_SECURED = {401: "No token, or an unknown one.", 403: "The token lacks the scope."}


def openapi_problems(schema: dict[str, Any], json_bodies: bool = False) -> dict[str, Any]:
    """Every error response of every operation documented as a problem (and a 422 for each
    operation that takes input, what the guard answers), replacing FastAPI's own validation
    error schema."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in components["Problem"].pop("$defs", {}).items():
        components[name] = sub
    for stale in ("HTTPValidationError", "ValidationError"):
        components.pop(stale, None)
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            responses = operation.setdefault("responses", {})
            takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
            if takes_input:
                responses.setdefault("422", {"description": "The request does not validate."})
            if operation.get("requestBody"):
                for code, description in _EVERY_BODY.items():
                    responses.setdefault(str(code), {"description": description})
                if json_bodies:
                    responses.setdefault("415", {"description": "The body is not JSON."})
            if operation.get("security", schema.get("security")):
                for code, description in _SECURED.items():
                    responses.setdefault(str(code), {"description": description})
            for code, answer in responses.items():
                if code.isdigit() and int(code) >= 400:
                    answer["content"] = content
    return schema
