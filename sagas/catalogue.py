"""Named sagas: a definition model and a registry. A client submits
``{"saga": "transfer", "input": {...}}``; the definition checks the input and expands it into
steps (participant, action, compensation, payload, dependencies).

    @saga("transfer", TransferInput, "Move money between two ledger accounts.")
    def transfer(inp: TransferInput) -> list[StepSpec]:
        return [StepSpec("debit", ...), StepSpec("credit", ..., after=("debit",))]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from sagas.policy import RetryPolicy

InputT = TypeVar("InputT", bound=BaseModel)


@dataclass(frozen=True)
class StepSpec:
    name: str
    participant: str
    action: str
    compensation: str
    payload: dict[str, Any]
    # Names of the steps this one waits for; with ``parallel=False`` each step simply follows
    # the previous one.
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Uses:
    """A saga action (and the compensation that undoes it) the saga's steps call, on a fixed
    ``participant`` or on the one an input ``field`` names. The coordinator's OpenAPI document
    checks them against its registry and the participants' catalogues, to list only the named
    sagas it can run and, for such a field, the participants it accepts
    (``coordinator/openapi_contract.py``)."""

    action: str
    compensation: str
    participant: str | None = None
    field: str | None = None


@dataclass(frozen=True)
class SagaDefinition(Generic[InputT]):
    name: str
    description: str
    input_model: type[InputT]
    build: Callable[[InputT], list[StepSpec]]
    parallel: bool = False
    retry: RetryPolicy | None = None
    # Every operation its steps call; None: not said (the document then lists the saga with
    # its input as the model states it).
    uses: tuple[Uses, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """A saga expanded into what the log stores."""

    branches: list[dict[str, Any]]
    deps: list[list[int]]
    retry: RetryPolicy | None = None
    steps: list[str] = field(default_factory=list)


class SagaInputError(ValueError):
    """The input does not fit the saga; ``errors`` are pydantic-style (loc, msg) pairs."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(msg for _, msg in errors))
        self.errors = errors


REGISTRY: dict[str, SagaDefinition[Any]] = {}


def saga(
    name: str,
    input_model: type[InputT],
    description: str,
    parallel: bool = False,
    retry: RetryPolicy | None = None,
    uses: tuple[Uses, ...] | None = None,
) -> Callable[[Callable[[InputT], list[StepSpec]]], Callable[[InputT], list[StepSpec]]]:
    def register(build: Callable[[InputT], list[StepSpec]]) -> Callable[[InputT], list[StepSpec]]:
        if name in REGISTRY:
            raise ValueError(f"saga {name!r} is defined twice")
        REGISTRY[name] = SagaDefinition(
            name, description, input_model, build, parallel, retry, uses
        )
        return build

    return register


def expand(name: str, raw_input: dict[str, Any]) -> Plan:
    definition = REGISTRY[name]
    try:
        inp = definition.input_model.model_validate(raw_input)
    except ValidationError as e:
        raise SagaInputError([(tuple(err["loc"]), f"{err['msg']}") for err in e.errors()]) from e
    specs = definition.build(inp)
    index = {s.name: i for i, s in enumerate(specs)}
    if definition.parallel:
        deps = [sorted(index[a] for a in s.after) for s in specs]
    else:
        deps = [[i - 1] if i else [] for i in range(len(specs))]
    branches = [
        {
            "participant": s.participant,
            "action": s.action,
            "compensation": s.compensation,
            "payload": s.payload,
        }
        for s in specs
    ]
    return Plan(branches, deps, definition.retry, [s.name for s in specs])
