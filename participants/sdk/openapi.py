"""A participant service's OpenAPI document as its guard and its signed endpoints answer:
``Participant.mount`` installs it after ``problems.install``.

Branch calls, 2PC phase two and the catalogue are signed by the coordinator with the
participant's secret (scheme ``participantSignature``: header ``Txn-Signature`` with
``Txn-Timestamp``; a branch call also names ``Txn-Gid``, ``Txn-Branch`` and ``Txn-Op``), and
answer 401 to anything not signed. The app's own endpoints need a bearer token (scheme
``bearerAuth``: 401 without one, 403 without the scope) unless the service opens them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI

from participants.sdk import wire
from participants.sdk.problems import PROBLEM_JSON

Schema = dict[str, Any]
BEARER = "bearerAuth"
SIGNED = "participantSignature"
_PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_BRANCH_INDEX = "^([0-9]|[1-5][0-9]|6[0-3])$"  # 0..MAX_BRANCHES-1
assert wire.MAX_BRANCHES == 64


def _header(name: str, schema: Schema, description: str, required: bool = True) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _timestamp() -> Schema:
    return _header(
        wire.H_TIMESTAMP,
        {"type": "string", "pattern": "^[0-9]{1,12}$"},
        "The Unix time of the signature, in whole seconds (within the replay window).",
    )


def _errors(responses: Schema, errors: Mapping[int, str]) -> None:
    for code, description in errors.items():
        responses[str(code)] = {"description": description, "content": _PROBLEM}


def _branch_call(operation: Schema, ops: Sequence[str], default: str) -> None:
    op_header = _header(
        wire.H_OP,
        {"type": "string", "enum": list(ops)},
        f"Which handler of this path: {', '.join(ops)} (absent: {default}).",
        required=default not in ops,
    )
    operation["parameters"] = [
        _header(wire.H_GID, {"type": "string", "pattern": wire.GID_PATTERN.pattern}, "The gid."),
        _header(wire.H_BRANCH, {"type": "string", "pattern": _BRANCH_INDEX}, "The branch index."),
        op_header,
        _timestamp(),
    ]
    operation["requestBody"] = {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "The branch's payload (none: {})."}
            }
        },
    }
    responses = operation["responses"]
    responses["200"] = {
        "description": "Done (or done before: every call is idempotent); the handler's result.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    _errors(
        responses,
        {
            400: f"{wire.H_OP} names no handler of this path.",
            401: "Not signed for this participant, path, branch and body, or out of the window.",
            409: "Refused: a 2PC no vote, a failed saga action or TCC try, or a compensation, "
            "confirm or cancel that cannot run yet; the detail says why.",
            422: f"{wire.H_GID} or {wire.H_BRANCH} is malformed.",
            503: "The participant's database is unavailable; retry.",
        },
    )


def _catalogue(operation: Schema) -> None:
    operation["parameters"] = [_timestamp()]
    nonce = {"type": "string", "pattern": wire.NONCE_PATTERN.pattern}
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"nonce": nonce}, "required": ["nonce"]}
            }
        },
    }
    responses = operation["responses"]
    responses["200"] = {
        "description": "The branch operations served, signed (header Txn-Signature).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    _errors(
        responses,
        {401: "Not signed with this participant's secret.", 422: "The body is not {nonce}."},
    )


def participant_openapi(
    schema: Schema,
    branch_ops: Mapping[str, Sequence[str]],
    default_op: str,
    tokens: bool,
    metrics_path: str,
) -> Schema:
    """``schema`` with the security and answers of every operation. ``branch_ops``: each
    business path served to the coordinator -> its ops; ``tokens``: the app's own endpoints
    need a bearer token."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[SIGNED] = {
        "type": "apiKey",
        "in": "header",
        "name": wire.H_SIGNATURE,
        "description": "HMAC-SHA256 by the coordinator with this participant's secret over the "
        "method, path, participant, gid, branch, op, timestamp and body.",
    }
    if tokens:
        schemes[BEARER] = {"type": "http", "scheme": "bearer", "description": "An API token."}
    signed = {wire.COMMIT_PATH, wire.ROLLBACK_PATH, wire.CATALOGUE_PATH, *branch_ops}
    for path, methods in schema.get("paths", {}).items():
        for operation in methods.values():
            responses = operation.setdefault("responses", {})
            if path in signed:
                operation["security"] = [{SIGNED: []}]
                for stale in ("403",):
                    responses.pop(stale, None)
                if path == wire.CATALOGUE_PATH:
                    _catalogue(operation)
                elif path in branch_ops:
                    _branch_call(operation, branch_ops[path], default_op)
                else:
                    _branch_call(operation, [path.rsplit("/", 1)[-1]], default_op)
                    operation["parameters"] = [
                        p for p in operation["parameters"] if p["name"] != wire.H_OP
                    ]
                continue
            if path == metrics_path:
                responses["200"] = {
                    "description": "Prometheus text.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            if path == "/healthz" or not tokens:
                operation["security"] = []
                continue
            operation["security"] = [{BEARER: []}]
            _errors(
                responses, {401: "No token, or an unknown one.", 403: "The token lacks the scope."}
            )
    exact_integers(schema)
    return schema


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def exact_integers(schema: Any) -> None:
    """Integer bounds as integers: FastAPI's OpenAPI models hold every bound as a float, which a
    client reads as, say, ``4.611686018427388e+18`` for 2**62."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            for bound in _BOUNDS:
                value = schema.get(bound)
                if isinstance(value, float) and value.is_integer():
                    schema[bound] = int(value)
        for value in schema.values():
            exact_integers(value)
    elif isinstance(schema, list):
        for value in schema:
            exact_integers(value)


def install(app: FastAPI, make: Callable[[Schema], Schema]) -> None:
    plain = app.openapi
    made: list[Schema] = []

    def openapi() -> Schema:
        if not made:
            made.append(make(plain()))
        return made[0]

    app.openapi = openapi  # type: ignore[method-assign]
