"""The submission schema of the served OpenAPI document says what the coordinator accepts: for
each body, valid by the document's JSON Schema exactly when the coordinator's own checks (the
model, ``normalize``, the declared operations) accept it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from coordinator.api import create_app
from coordinator.declared import Operations, undeclared
from coordinator.memlog import MemLog
from coordinator.models import TxnIn
from coordinator.normalize import Invalid, normalize
from coordinator.openapi_contract import Deployment, with_deployment
from sagas import REGISTRY, expand
from tests.unit.test_api_auth import settings
from tests.unit.test_submit_fastpath import YesTransport

ADJUST, UNDO = "/accounts/adjust", "/accounts/adjust/undo"
TRY, CONFIRM, CANCEL = "/tcc/adjust", "/tcc/adjust/confirm", "/tcc/adjust/cancel"
LEDGER: Operations = {
    (ADJUST, "2pc"): None,
    (ADJUST, "action"): UNDO,
    (UNDO, "compensation"): None,
    (TRY, "tcc_try"): (CONFIRM, CANCEL),
    (CONFIRM, "tcc_confirm"): None,
    (CANCEL, "tcc_cancel"): None,
}
ONLY_2PC: Operations = {(ADJUST, "2pc"): None}
SHOP: dict[str, Operations] = {
    "inventory": {("/stock/reserve", "action"): "/stock/reserve/undo"},
    "payments": {("/payments/charge", "action"): "/payments/charge/undo"},
    "shipping": {("/shipments/create", "action"): "/shipments/create/undo"},
}


@functools.cache
def static_document() -> dict[str, Any]:
    document: dict[str, Any] = create_app(settings(), MemLog(), YesTransport()).openapi()
    return document


def validator(d: Deployment) -> Draft202012Validator:
    if d.key() not in _validators:
        _validators[d.key()] = _validator(d)
    return _validators[d.key()]


_validators: dict[tuple[Any, ...], Draft202012Validator] = {}


def _validator(d: Deployment) -> Draft202012Validator:
    document = with_deployment(static_document(), d)
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
    schema = {"$ref": "urn:doc#/components/schemas/TxnIn"}
    for sub in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(sub)
    return Draft202012Validator(schema, registry=registry)


def accepted(body: dict[str, Any], d: Deployment) -> bool:
    """What the coordinator answers (201, or 422) for ``body``, without a log."""
    try:
        txn = TxnIn.model_validate(body)
        plan = normalize(txn, dict.fromkeys(d.registry, "http://x"))
    except (ValidationError, Invalid):
        return False
    ops = {p: d.catalogues[p] for p in d.registry if p in d.catalogues}
    return all(
        b.participant in ops and undeclared(plan.mode, b, ops[b.participant]) is None
        for b in plan.branches
    )


def branch(participant: str = "ledger1", **extra: Any) -> dict[str, Any]:
    return {"participant": participant, "action": ADJUST, "payload": {"a": 1}, **extra}


def saga_branch(participant: str = "ledger1", **extra: Any) -> dict[str, Any]:
    return branch(participant, **{"compensation": UNDO, **extra})


def tcc_branch(participant: str = "ledger1", **extra: Any) -> dict[str, Any]:
    paths = {"try": TRY, "confirm": CONFIRM, "cancel": CANCEL}
    return {"participant": participant, **paths, "payload": {"a": 1}, **extra}


def transfer(**extra: Any) -> dict[str, Any]:
    inp = {
        "from_ledger": "ledger1",
        "from_account": "a",
        "to_ledger": "ledger1",
        "to_account": "b",
        "amount": 5,
        **extra,
    }
    return {"saga": "transfer", "input": inp}


def order() -> dict[str, Any]:
    items = [{"sku": "x", "qty": 1}]
    inp = {"order_id": "o1", "customer": "c", "items": items, "destination": "d"}
    return {"saga": "place_order", "input": inp}


LEDGERS = Deployment(
    ("ledger1", "ledger2", "ledger3", "unread"),
    {"ledger1": LEDGER, "ledger2": ONLY_2PC, "ledger3": LEDGER},
)
WITH_SHOP = Deployment((*LEDGERS.registry, *SHOP), {**LEDGERS.catalogues, **SHOP})

BODIES: list[tuple[str, dict[str, Any], bool]] = [
    ("2pc", {"mode": "2pc", "branches": [branch(), branch("ledger2")]}, True),
    ("2pc, nulls", {"mode": "2pc", "gid": None, "branches": [branch(compensation=None)]}, True),
    ("2pc, gid", {"gid": "g-1", "mode": "2pc", "branches": [branch()], "timeout_s": 5}, True),
    ("2pc, bad gid", {"gid": "-g", "mode": "2pc", "branches": [branch()]}, False),
    ("2pc, compensation", {"mode": "2pc", "branches": [saga_branch()]}, False),
    ("2pc, depends_on", {"mode": "2pc", "branches": [branch(depends_on=[])]}, False),
    ("2pc, retry", {"mode": "2pc", "branches": [branch()], "retry": {}}, False),
    ("no mode", {"branches": [branch()]}, False),
    ("no branches", {"mode": "2pc", "branches": []}, False),
    ("unknown participant", {"mode": "2pc", "branches": [branch("nobody")]}, False),
    ("catalogue unread", {"mode": "2pc", "branches": [branch("unread")]}, False),
    ("undeclared", {"mode": "2pc", "branches": [dict(branch(), action="/other")]}, False),
    ("a URL", {"mode": "2pc", "branches": [branch("http://x")]}, False),
    ("extra field", {"mode": "2pc", "branches": [branch()], "x": 1}, False),
    ("timeout string", {"mode": "2pc", "branches": [branch()], "timeout_s": "5"}, False),
    ("timeout bool", {"mode": "2pc", "branches": [branch()], "timeout_s": True}, False),
    ("timeout 0", {"mode": "2pc", "branches": [branch()], "timeout_s": 0}, False),
    ("payload NUL", {"mode": "2pc", "branches": [branch(payload={"a": "x\x00"})]}, False),
    ("payload 2**64", {"mode": "2pc", "branches": [branch(payload={"a": 2**64})]}, False),
    ("saga", {"mode": "saga", "branches": [saga_branch(), saga_branch("ledger3")]}, True),
    ("saga, retry", {"mode": "saga", "branches": [saga_branch()], "retry": {"jitter": 0}}, True),
    (
        "saga, retry bool",
        {"mode": "saga", "branches": [saga_branch()], "retry": {"jitter": False}},
        False,
    ),
    (
        "saga, integral float",
        {"mode": "saga", "branches": [saga_branch()], "retry": {"max_attempts": 3.0}},
        True,
    ),
    ("saga, no compensation", {"mode": "saga", "branches": [branch()]}, False),
    (
        "saga, wrong compensation",
        {"mode": "saga", "branches": [saga_branch(compensation="/x")]},
        False,
    ),
    ("saga, 2pc only", {"mode": "saga", "branches": [saga_branch("ledger2")]}, False),
    (
        "saga, dag",
        {"mode": "saga", "branches": [saga_branch(depends_on=[]), saga_branch(depends_on=[0, 0])]},
        True,
    ),
    ("saga, self", {"mode": "saga", "branches": [saga_branch(depends_on=[0])]}, False),
    ("saga, out of range", {"mode": "saga", "branches": [saga_branch(depends_on=[3])]}, False),
    (
        "saga, cycle",
        {"mode": "saga", "branches": [saga_branch(depends_on=[1]), saga_branch(depends_on=[0])]},
        False,
    ),
    ("saga, input", {"mode": "saga", "branches": [saga_branch()], "input": {}}, False),
    ("tcc", {"mode": "tcc", "branches": [tcc_branch(), tcc_branch("ledger3")]}, True),
    (
        "tcc, nulls",
        {"mode": "tcc", "branches": [tcc_branch(action=None, depends_on=None)], "gid": None},
        True,
    ),
    ("tcc, 2pc-only ledger", {"mode": "tcc", "branches": [tcc_branch("ledger2")]}, False),
    ("tcc, wrong confirm", {"mode": "tcc", "branches": [tcc_branch(confirm=CANCEL)]}, False),
    ("tcc, wrong cancel", {"mode": "tcc", "branches": [tcc_branch(cancel=UNDO)]}, False),
    ("tcc, no cancel", {"mode": "tcc", "branches": [tcc_branch(cancel=None)]}, False),
    ("tcc, try a 2pc op", {"mode": "tcc", "branches": [tcc_branch(**{"try": ADJUST})]}, False),
    ("tcc, action", {"mode": "tcc", "branches": [tcc_branch(action=ADJUST)]}, False),
    ("tcc, depends_on", {"mode": "tcc", "branches": [tcc_branch(depends_on=[])]}, False),
    ("tcc, retry", {"mode": "tcc", "branches": [tcc_branch()], "retry": {}}, False),
    ("tcc, 2pc branch", {"mode": "tcc", "branches": [branch()]}, False),
    ("2pc, tcc branch", {"mode": "2pc", "branches": [tcc_branch()]}, False),
    ("2pc, confirm", {"mode": "2pc", "branches": [branch(confirm=CONFIRM)]}, False),
    ("2pc, null tcc fields", {"mode": "2pc", "branches": [branch(confirm=None)]}, True),
    ("saga, try", {"mode": "saga", "branches": [saga_branch(**{"try": TRY})]}, False),
    ("transfer", transfer(), True),
    ("transfer, mode saga", {**transfer(), "mode": "saga", "gid": "t1"}, True),
    ("transfer, mode 2pc", {**transfer(), "mode": "2pc"}, False),
    ("transfer, branches", {**transfer(), "branches": [saga_branch()]}, False),
    ("transfer, 2pc-only ledger", transfer(to_ledger="ledger2"), False),
    ("transfer, unknown ledger", transfer(to_ledger="nobody"), False),
    ("transfer, amount 5.0", transfer(amount=5.0), True),
    ("transfer, amount '5'", transfer(amount="5"), False),
    ("transfer, no input", {"saga": "transfer"}, False),
    ("unknown saga", {"saga": "nope", "input": {}}, False),
    ("place_order without the shop", order(), False),
]


@pytest.mark.parametrize(("name", "body", "expected"), BODIES, ids=[b[0] for b in BODIES])
def test_the_document_accepts_what_the_coordinator_accepts(
    name: str, body: dict[str, Any], expected: bool
) -> None:
    assert accepted(body, LEDGERS) is expected, "the coordinator"
    errors = list(validator(LEDGERS).iter_errors(body))
    assert (not errors) is expected, [e.message for e in errors][:3]


def test_a_named_saga_is_listed_where_its_participants_declare_its_steps() -> None:
    assert accepted(order(), WITH_SHOP)
    assert validator(WITH_SHOP).is_valid(order())
    schemas = with_deployment({}, LEDGERS)["components"]["schemas"]
    assert "NamedSaga_place_order" not in schemas and "NamedSaga_transfer" in schemas
    ledgers = schemas["SagaInput_transfer"]["properties"]["from_ledger"]["enum"]
    assert ledgers == ["ledger1", "ledger3"]


def test_with_no_catalogue_read_nothing_can_be_submitted() -> None:
    d = Deployment(("ledger1",), {})
    assert not validator(d).is_valid({"mode": "2pc", "branches": [branch()]})
    assert not accepted({"mode": "2pc", "branches": [branch()]}, d)


@pytest.mark.parametrize(
    "body", [transfer(to_ledger="ledger3"), order()], ids=["transfer", "order"]
)
def test_a_named_sagas_uses_name_every_operation_its_steps_call(body: dict[str, Any]) -> None:
    definition = REGISTRY[body["saga"]]
    plan = expand(body["saga"], body["input"])
    assert definition.uses is not None
    for step in plan.branches:
        assert any(
            (use.action, use.compensation) == (step["action"], step["compensation"])
            and step["participant"]
            in (use.participant, body["input"].get(use.field or "", use.participant))
            for use in definition.uses
        ), step
