"""The coordinator's errors are RFC 9457 problem details, whoever answers (the guard, the
submission's fast path, a route, validation), and its OpenAPI document says so for every error
response of every operation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from coordinator.api import create_app
from coordinator.memlog import MemLog
from coordinator.submission import MAX_BODY_BYTES
from tests.unit.test_api_auth import bearer, client_of, settings
from tests.unit.test_submit_fastpath import YesTransport

PROBLEM = "application/problem+json"
SUBMIT = "/v1/transactions"


def problem_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == PROBLEM, reply.headers
    body: dict[str, Any] = reply.json()
    assert body["type"] == "about:blank" and body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


async def test_every_kind_of_refusal_is_a_problem() -> None:
    app = create_app(settings(), MemLog(), YesTransport())
    submit = bearer("submit")
    async with client_of(app) as c:
        # The guard: no token, a body that is not JSON, a body over the limit.
        assert problem_of(await c.get(f"{SUBMIT}/g1"), 401)["title"] == "Unauthorized"
        not_json = await c.post(SUBMIT, content=b"x", headers=submit)
        assert "application/json" in problem_of(not_json, 415)["detail"]
        huge = b"{" + b" " * MAX_BODY_BYTES + b"}"
        json_type = {**submit, "Content-Type": "application/json"}
        big = await c.post(SUBMIT, content=huge, headers=json_type)
        assert str(MAX_BODY_BYTES) in problem_of(big, 413)["detail"]
        # A route: no such transaction.
        missing = await c.get(f"{SUBMIT}/no-such-gid", headers=bearer("read"))
        assert "no-such-gid" in problem_of(missing, 404)["detail"]
        # Validation: each field at fault named, the input never echoed.
        secret = "s3cr3t-value-never-echoed"
        bad = {"mode": "2pc", "branches": [{"participant": "a", "action": 7, "x": secret}]}
        invalid = problem_of(await c.post(SUBMIT, json=bad, headers=submit), 422)
        fields = [e["field"] for e in invalid["errors"]]
        assert fields and all(f.startswith("body.") for f in fields), invalid
        assert all(set(e) == {"field", "message", "type"} for e in invalid["errors"]), invalid
        assert fields[0] in invalid["detail"]
        assert secret not in str(invalid)
        # An unknown participant (the fast path's own refusal) names the one given.
        unknown = {"mode": "2pc", "branches": [{"participant": "zz", "action": "/x"}]}
        refused = await c.post(SUBMIT, json=unknown, headers=submit)
        assert "zz" in problem_of(refused, 422)["detail"]


@pytest.mark.parametrize("path", ["/v1/resolve", "/v1/ended"])
async def test_unsigned_questions_are_refused_as_problems(path: str) -> None:
    app = create_app(settings(), MemLog(), YesTransport())
    async with client_of(app) as c:
        reply = await c.post(path, json={"gid": "g1", "nonce": "n" * 16})
        problem_of(reply, 401)


def test_the_openapi_document_names_the_problem_for_every_error() -> None:
    schema = create_app(settings(), MemLog(), YesTransport()).openapi()
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["properties"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    errors = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in responses, (method, path)
            for code, answer in responses.items():
                if int(code) >= 400:
                    errors += 1
                    content = answer["content"]
                    assert list(content) == [PROBLEM], (method, path, code)
                    ref = content[PROBLEM]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Problem", (method, path, code)
    assert errors >= 10


async def test_a_method_a_path_does_not_serve_is_a_405_naming_all_it_does() -> None:
    app = create_app(settings(), MemLog(), YesTransport())
    admin = bearer("admin")
    async with client_of(app) as c:
        # GET and POST /v1/transactions are two routes: the Allow header names both.
        options = await c.request("OPTIONS", SUBMIT, headers=admin)
        problem_of(options, 405)
        assert options.headers["allow"] == "GET, POST"
        # No POST route at this path: a 405 (not the 415 of a body check meant for actions).
        post = await c.post(f"{SUBMIT}/g1", content=b"x", headers=admin)
        problem_of(post, 405)
        assert post.headers["allow"] == "GET"
