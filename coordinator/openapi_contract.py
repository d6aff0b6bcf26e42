"""The submission's contract in the OpenAPI document a coordinator serves: the deployment's.

``POST /v1/transactions`` accepts what its model (``coordinator.models.TxnIn``) validates, and
then only what ``coordinator.normalize`` and the participants' catalogues allow
(``coordinator.declared``): participants of this coordinator's registry, the operations each
declares, a named saga of the catalogue whose participants declare its steps. The document says
all of it, as JSON Schema made from the registry and the catalogues read: a ``oneOf`` of an
explicit 2PC body, an explicit saga body, an explicit TCC body and one body per named saga it
can run; a branch is a ``oneOf`` over the operations declared (``{participant: const, action:
const or enum, compensation: const}``; a TCC branch ``{participant, try, confirm, cancel}``, each
a const). It is made again whenever a catalogue read changes what is declared.

What JSON Schema cannot state is said in the descriptions, and answered with a documented 422
problem: a payload over 64 KiB, JSON nested 200 levels or deeper, and a ``depends_on`` graph
with a cycle. Of the graphs, the document states the form every acyclic one can be written in
(a branch depends on earlier branches); the coordinator accepts the same graph in any order.

The pydantic models stay the source of the 422s; this module only describes them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from coordinator.declared import Operations
from coordinator.models import MAX_PAYLOAD_BYTES
from participants.sdk.openapi import exact_integers
from participants.sdk.wire import GID_PATTERN, MAX_BRANCHES
from sagas import REGISTRY
from sagas.catalogue import SagaDefinition

Schema = dict[str, Any]
REF = "#/components/schemas/"
# Text the log can store: no NUL (coordinator.normalize.check_storable; a lone surrogate is
# refused too, and is no Unicode string for JSON Schema either).
TEXT_PATTERN = "^[^\\u0000]*$"
INT64 = (-(2**63), 2**63 - 1)
NOT_STATED = (
    "Rules JSON Schema cannot state, each answered with a 422 problem naming the field: a "
    f"branch's payload over {MAX_PAYLOAD_BYTES // 1024} KiB as JSON; JSON nested 200 levels or "
    "deeper; a depends_on graph with a cycle or an index out of range (this document states "
    "the order every acyclic graph can be given in: each branch depends on earlier ones; the "
    "coordinator also accepts the same graph with the branches in another order)."
)


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def nullable(schema: Schema) -> Schema:
    """What pydantic accepts for an optional field: the value, or null (same as absent)."""
    return {"anyOf": [schema, {"type": "null"}]}


NULL: Schema = {"type": "null"}


@dataclass(frozen=True)
class Deployment:
    """What the coordinator accepts beyond its models: its registry, and the operations of each
    participant whose catalogue it has read (a submission naming another is a 503 until read)."""

    registry: Sequence[str]
    catalogues: Mapping[str, Operations]

    def readable(self) -> list[str]:
        return sorted(p for p in self.registry if p in self.catalogues)

    def twopc(self, participant: str) -> list[str]:
        ops = self.catalogues.get(participant, {})
        return sorted(path for path, kind in ops if kind == "2pc")

    def actions(self, participant: str) -> dict[str, str]:
        """Saga action path -> its compensation."""
        ops = self.catalogues.get(participant, {})
        return {
            path: undo
            for (path, kind), undo in sorted(ops.items())
            if kind == "action" and isinstance(undo, str)
        }

    def tccs(self, participant: str) -> dict[str, tuple[str, str]]:
        """TCC try path -> its confirm and cancel."""
        ops = self.catalogues.get(participant, {})
        return {
            path: pair
            for (path, kind), pair in sorted(ops.items())
            if kind == "tcc_try" and isinstance(pair, tuple)
        }

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(self.registry),
            tuple(sorted((p, tuple(sorted(ops.items()))) for p, ops in self.catalogues.items())),
        )


def common_components() -> dict[str, Schema]:
    json_value: Schema = {
        "description": "A JSON value the log can store: text without NUL or lone surrogates, "
        "numbers within the range of 64-bit integers, nested under 200 levels.",
        "anyOf": [
            NULL,
            {"type": "boolean"},
            {"type": "number", "minimum": INT64[0], "maximum": INT64[1]},
            {"type": "string", "pattern": TEXT_PATTERN},
            {"type": "array", "items": ref("JsonValue")},
            {
                "type": "object",
                "propertyNames": {"pattern": TEXT_PATTERN},
                "additionalProperties": ref("JsonValue"),
            },
        ],
    }
    return {
        "Gid": {
            "type": "string",
            "pattern": GID_PATTERN.pattern,
            "description": "1-128 of [A-Za-z0-9._:-], starting with a letter or digit.",
        },
        "JsonValue": json_value,
        "Payload": {
            "type": "object",
            "propertyNames": {"pattern": TEXT_PATTERN},
            "additionalProperties": ref("JsonValue"),
            "description": f"What the participant's handler gets: at most {MAX_PAYLOAD_BYTES} "
            "bytes as JSON (a 422 beyond).",
        },
    }


def _common_properties() -> dict[str, Schema]:
    return {
        "gid": nullable(ref("Gid")) | {"description": "Generated (time-ordered) if absent."},
        "timeout_s": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 86_400})
        | {
            "description": "2PC: abort if not fully prepared by then; TCC: cancel if not every "
            "try succeeded by then; saga: compensate if the forward part has not finished by "
            "then (default 30)."
        },
    }


def _body(description: str, required: list[str], properties: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "required": required,
        "properties": {**_common_properties(), **properties},
    }


def _twopc_branch(d: Deployment) -> list[Schema]:
    out = []
    for participant in d.readable():
        paths = d.twopc(participant)
        if paths:
            out.append(
                {
                    "type": "object",
                    "title": f"2PC branch on {participant}",
                    "additionalProperties": False,
                    "required": ["participant", "action"],
                    "properties": {
                        "participant": {"const": participant},
                        "action": {"enum": paths},
                        "payload": ref("Payload"),
                        "compensation": NULL,
                        "depends_on": NULL,
                        **NO_TCC,
                    },
                }
            )
    return out


# What a 2PC or saga branch may give of TCC's fields: null, the same as absent.
NO_TCC: Schema = {"try": NULL, "confirm": NULL, "cancel": NULL}


def _tcc_branches(d: Deployment) -> list[Schema]:
    out = []
    for participant in d.readable():
        for tried, (confirm, cancel) in d.tccs(participant).items():
            out.append(
                {
                    "type": "object",
                    "title": f"TCC branch {participant} {tried}",
                    "additionalProperties": False,
                    "required": ["participant", "try", "confirm", "cancel"],
                    "properties": {
                        "participant": {"const": participant},
                        "try": {"const": tried},
                        "confirm": {"const": confirm},
                        "cancel": {"const": cancel},
                        "payload": ref("Payload"),
                        "action": NULL,
                        "compensation": NULL,
                        "depends_on": NULL,
                    },
                }
            )
    return out


def _depends_on(before: int) -> Schema:
    """Indexes of earlier branches (``before`` of them) this one waits for."""
    if before == 0:
        return nullable({"type": "array", "maxItems": 0})
    items = {"type": "integer", "minimum": 0, "maximum": before - 1}
    return nullable({"type": "array", "maxItems": MAX_BRANCHES, "items": items})


def _saga_steps(d: Deployment) -> list[Schema]:
    out = []
    for participant in d.readable():
        for action, undo in d.actions(participant).items():
            out.append(
                {
                    "type": "object",
                    "title": f"saga step {participant} {action}",
                    "additionalProperties": False,
                    "required": ["participant", "action", "compensation"],
                    "properties": {
                        "participant": {"const": participant},
                        "action": {"const": action},
                        "compensation": {"const": undo},
                        "payload": ref("Payload"),
                        "depends_on": _depends_on(MAX_BRANCHES),
                        **NO_TCC,
                    },
                }
            )
    return out


def _text_only(schema: Any) -> None:
    """Every free string of a saga's input (no pattern, enum or const) as the log stores it."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and not {"pattern", "enum", "const"} & set(schema):
            schema["pattern"] = TEXT_PATTERN
        for value in schema.values():
            _text_only(value)
    elif isinstance(schema, list):
        for value in schema:
            _text_only(value)


def _accepts(d: Deployment, participant: str, uses: Sequence[Any]) -> bool:
    actions = d.actions(participant) if participant in d.catalogues else {}
    return participant in d.registry and all(actions.get(u.action) == u.compensation for u in uses)


def _named_saga(
    d: Deployment, definition: SagaDefinition[Any], components: dict[str, Schema]
) -> Schema | None:
    """The body naming ``definition``, or None when no input could run here."""
    name = definition.name
    uses = definition.uses or ()
    fixed = {u.participant for u in uses if u.participant is not None}
    if not all(_accepts(d, p, [u for u in uses if u.participant == p]) for p in fixed):
        return None
    prefix = f"SagaInput_{name}"
    schema = definition.input_model.model_json_schema(ref_template=REF + prefix + "_{model}")
    defs = schema.pop("$defs", {})
    _text_only(schema)
    for field in sorted({u.field for u in uses if u.field is not None}):
        needs = [u for u in uses if u.field == field]
        names = [p for p in d.readable() if _accepts(d, p, needs)]
        if not names:
            return None
        described = schema["properties"][field].get("description", "")
        schema["properties"][field] = {
            "enum": names,
            "description": (described + " " if described else "")
            + "A participant of this deployment that declares "
            + ", ".join(f"{u.action} (undone by {u.compensation})" for u in needs)
            + ".",
        }
    components[prefix] = schema
    for model, sub in defs.items():
        _text_only(sub)
        components[f"{prefix}_{model}"] = sub
    try:
        definition.input_model.model_validate({})
        empty_ok = True
    except ValueError:
        empty_ok = False
    return _body(
        f"The named saga {name!r}: {definition.description}",
        ["saga"] if empty_ok else ["saga", "input"],
        {
            "saga": {"const": name},
            "input": nullable(ref(prefix)) if empty_ok else ref(prefix),
            "mode": nullable({"const": "saga"}),
            "branches": NULL,
            "retry": nullable(ref("RetryPolicy")),
        },
    )


def submission_components(
    d: Deployment, sagas: Mapping[str, SagaDefinition[Any]] | None = None
) -> dict[str, Schema]:
    """The schemas of ``POST /v1/transactions``'s body for deployment ``d``: ``TxnIn`` and
    what it refers to (``RetryPolicy`` is pydantic's, kept from the static document)."""
    sagas = REGISTRY if sagas is None else sagas
    components = common_components()
    bodies: list[Schema] = []
    twopc = _twopc_branch(d)
    if twopc:
        components["TwoPhaseCommitBranch"] = {"oneOf": twopc}
        components["TwoPhaseCommitSubmission"] = _body(
            "Explicit 2PC branches, prepared in parallel: no compensation, depends_on or retry.",
            ["mode", "branches"],
            {
                "mode": {"enum": ["2pc"]},
                "branches": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BRANCHES,
                    "items": ref("TwoPhaseCommitBranch"),
                },
                "saga": NULL,
                "input": NULL,
                "retry": NULL,
            },
        )
        bodies.append(ref("TwoPhaseCommitSubmission"))
    steps = _saga_steps(d)
    if steps:
        components["SagaBranch"] = {
            "description": "A saga action of a participant's catalogue and its compensation.",
            "oneOf": steps,
        }
        for i in range(MAX_BRANCHES):
            components[f"SagaBranch{i}"] = {
                "allOf": [ref("SagaBranch"), {"properties": {"depends_on": _depends_on(i)}}]
            }
        components["SagaSubmission"] = _body(
            "Explicit saga branches, each with the compensation its participant declares. "
            "With no depends_on anywhere the steps run in order; with any, exactly the graph "
            "given (here: each branch names earlier branches).",
            ["mode", "branches"],
            {
                "mode": {"enum": ["saga"]},
                "branches": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BRANCHES,
                    "prefixItems": [ref(f"SagaBranch{i}") for i in range(MAX_BRANCHES)],
                },
                "saga": NULL,
                "input": NULL,
                "retry": nullable(ref("RetryPolicy")),
            },
        )
        bodies.append(ref("SagaSubmission"))
    tcc = _tcc_branches(d)
    if tcc:
        components["TccBranch"] = {
            "description": "A TCC try of a participant's catalogue, with the confirm and the "
            "cancel it declares.",
            "oneOf": tcc,
        }
        components["TccSubmission"] = _body(
            "Explicit TCC branches: every try runs in parallel; when all succeed every confirm "
            "is sent (retried until it succeeds), otherwise every branch is cancelled. No "
            "action, compensation, depends_on or retry.",
            ["mode", "branches"],
            {
                "mode": {"enum": ["tcc"]},
                "branches": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BRANCHES,
                    "items": ref("TccBranch"),
                },
                "saga": NULL,
                "input": NULL,
                "retry": NULL,
            },
        )
        bodies.append(ref("TccSubmission"))
    for name in sorted(sagas):
        body = _named_saga(d, sagas[name], components)
        if body is not None:
            components[f"NamedSaga_{name}"] = body
            bodies.append(ref(f"NamedSaga_{name}"))
    described = (
        "A transaction: explicit branches (mode 2pc, saga or tcc) or a named saga with its "
        "input. "
        "Participants, operations and named sagas are this deployment's: its registry and the "
        "catalogues its participants declare (one whose catalogue was not read yet is left "
        "out; a submission naming it is a 503 until it is). " + NOT_STATED
    )
    components["TxnIn"] = (
        {"description": described, "oneOf": bodies}
        if bodies
        else {"description": described + " Nothing can be submitted here now.", "not": {}}
    )
    return components


def with_deployment(document: Schema, d: Deployment) -> Schema:
    """A copy of the static ``document`` with the submission's schemas of deployment ``d``."""
    out = copy.deepcopy(document)
    schemas = out.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("BranchIn", None)  # the model's; the deployment's branches replace it
    schemas.update(submission_components(d))
    exact_integers(out)
    return out


def install(
    app: FastAPI, registry: Sequence[str], catalogues: Callable[[], Mapping[str, Operations]]
) -> None:
    """Serve the deployment's document: the app's own, its submission schema made from
    ``registry`` and ``catalogues()`` (the verified operations of each participant read so far),
    again whenever they change."""
    plain = app.openapi
    made: dict[tuple[Any, ...], Schema] = {}

    def openapi() -> Schema:
        d = Deployment(tuple(sorted(registry)), catalogues())
        key = d.key()
        if key not in made:
            made.clear()
            made[key] = with_deployment(plain(), d)
        return made[key]

    app.openapi = openapi  # type: ignore[method-assign]
