"""Checks a submission beyond its schema and turns it into what the log stores: explicit
branches (a named saga expanded), their dependencies, the retry policy. Every refusal names the
field to fix (HTTP 422)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.models import MAX_PAYLOAD_BYTES, BranchIn, TxnIn, payload_size
from sagas import REGISTRY, SagaInputError, expand
from sagas.policy import RetryPolicy

Loc = tuple[str | int, ...]


class Invalid(ValueError):
    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


@dataclass(frozen=True)
class Normalized:
    mode: str
    branches: list[BranchIn]
    deps: list[list[int]] | None
    retry: RetryPolicy | None
    saga: str | None

    def request(self, body: TxnIn) -> dict[str, Any]:
        """The stored request: the body as sent, plus the expanded plan the driver needs."""
        stored = body.model_dump(mode="json", exclude={"gid"}, exclude_none=True)
        stored["mode"] = self.mode
        stored["branches"] = [b.dump() for b in self.branches]
        if self.deps is not None:
            stored["deps"] = self.deps
        if self.retry is not None:
            stored["retry"] = self.retry.model_dump(mode="json")
        return stored


def check_storable(value: Any, loc: Loc) -> None:
    """What the log's jsonb and our JSON encoder accept: no NUL characters, no lone surrogates,
    integers within 64 bits, nesting under 200 levels. Refused here (422), not by the log."""
    stack: list[tuple[Any, Loc, int]] = [(value, loc, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > 200:
            raise Invalid(where, "nested too deeply (at most 200 levels)")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        elif isinstance(item, int):
            if not -(2**63) <= item < 2**63:
                raise Invalid(where, "integers must fit in 64 bits")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(str(key), where)
                stack.append((child, (*where, str(key)), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, (*where, i), depth + 1) for i, child in enumerate(item))


def _check_text(text: str, where: Loc) -> None:
    if "\x00" in text:
        raise Invalid(where, "text must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Invalid(where, "text must be valid Unicode (no lone surrogates)") from e


def normalize(body: TxnIn, registry: dict[str, str]) -> Normalized:
    check_storable(body.model_dump(mode="python", exclude_none=True), ("body",))
    if body.saga is not None:
        return _named(body, registry)
    if body.input is not None:
        raise Invalid(("body", "input"), "input goes with a named saga: give `saga` too")
    if body.mode is None:
        raise Invalid(
            ("body", "mode"), "mode is required ('2pc', 'saga' or 'tcc') unless `saga` names one"
        )
    if body.branches is None:
        raise Invalid(("body", "branches"), "branches are required unless `saga` names a saga")
    _check_branches(body.branches, registry)
    if body.mode == "tcc":
        return _tcc(body, body.branches)
    _no_tcc_fields(body.branches)
    if body.mode == "2pc":
        for i, b in enumerate(body.branches):
            if b.compensation is not None:
                raise Invalid(
                    ("body", "branches", i, "compensation"),
                    "2pc branches have no compensation (rollback undoes them); use mode 'saga'",
                )
            if b.depends_on is not None:
                raise Invalid(
                    ("body", "branches", i, "depends_on"),
                    "2pc branches are prepared in parallel; depends_on is for sagas",
                )
        if body.retry is not None:
            raise Invalid(("body", "retry"), "retry is the saga actions' policy; not for 2pc")
        return Normalized("2pc", body.branches, None, None, None)
    for i, b in enumerate(body.branches):
        if b.compensation is None:
            raise Invalid(
                ("body", "branches", i, "compensation"),
                "every saga branch needs a compensation (the path that undoes its action)",
            )
    deps = _deps(body.branches)
    return Normalized("saga", body.branches, deps, body.retry or RetryPolicy(), None)


def _tcc(body: TxnIn, branches: list[BranchIn]) -> Normalized:
    """TCC branches give try, confirm and cancel, and nothing of the other modes."""
    for i, b in enumerate(branches):
        for name, value in (("try", b.try_), ("confirm", b.confirm), ("cancel", b.cancel)):
            if value is None:
                raise Invalid(
                    ("body", "branches", i, name),
                    "every TCC branch gives try, confirm and cancel (paths on its participant)",
                )
        for name, given in (
            ("action", b.action),
            ("compensation", b.compensation),
            ("depends_on", b.depends_on),
        ):
            if given is not None:
                raise Invalid(
                    ("body", "branches", i, name),
                    f"TCC branches have no {name}: they give try, confirm and cancel, and their "
                    "tries run in parallel",
                )
    if body.retry is not None:
        raise Invalid(("body", "retry"), "retry is the saga actions' policy; not for tcc")
    return Normalized("tcc", branches, None, None, None)


def _no_tcc_fields(branches: list[BranchIn]) -> None:
    for i, b in enumerate(branches):
        for name, value in (("try", b.try_), ("confirm", b.confirm), ("cancel", b.cancel)):
            if value is not None:
                raise Invalid(
                    ("body", "branches", i, name), f"{name} is for TCC branches (mode 'tcc')"
                )
        if b.action is None:
            raise Invalid(("body", "branches", i, "action"), "Field required")


def _named(body: TxnIn, registry: dict[str, str]) -> Normalized:
    name = body.saga or ""
    if body.mode not in (None, "saga"):
        raise Invalid(("body", "mode"), "a named saga runs as mode 'saga'")
    if body.branches is not None:
        raise Invalid(("body", "branches"), "give either `saga` and `input`, or `branches`")
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "(none)"
        raise Invalid(("body", "saga"), f"unknown saga {name!r}; the catalogue has: {known}")
    try:
        plan = expand(name, body.input or {})
    except SagaInputError as e:
        loc, msg = e.errors[0]
        raise Invalid(("body", "input", *loc), msg) from e
    branches = [BranchIn.model_validate(b) for b in plan.branches]
    try:
        _check_branches(branches, registry)
    except Invalid as e:
        raise Invalid(("body", "input"), f"saga {name!r}: {e.msg}") from e
    retry = body.retry or plan.retry or RetryPolicy()
    return Normalized("saga", branches, plan.deps, retry, name)


def _check_branches(branches: list[BranchIn], registry: dict[str, str]) -> None:
    for i, branch in enumerate(branches):
        if branch.participant not in registry:
            hint = (
                "raw URLs are not accepted; name a participant from the registry"
                if "://" in branch.participant or "/" in branch.participant
                else "unknown participant"
            )
            # The registry itself is not listed: a caller learns nothing of what else runs.
            raise Invalid(
                ("body", "branches", i, "participant"),
                f"{hint}: {branch.participant!r} is not in this coordinator's registry "
                "(TXN_PARTICIPANTS)",
            )
        size = payload_size(branch.payload)
        if size > MAX_PAYLOAD_BYTES:
            raise Invalid(
                ("body", "branches", i, "payload"),
                f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (64 KiB)",
            )


def _deps(branches: list[BranchIn]) -> list[list[int]]:
    """Sequential when no branch gives depends_on; otherwise exactly the DAG given."""
    n = len(branches)
    if all(b.depends_on is None for b in branches):
        return [[i - 1] if i else [] for i in range(n)]
    deps = [sorted(set(b.depends_on or [])) for b in branches]
    for i, d in enumerate(deps):
        for j in d:
            if not 0 <= j < n or j == i:
                raise Invalid(
                    ("body", "branches", i, "depends_on"),
                    f"depends_on must name other branches by index 0..{n - 1}; got {j}",
                )
    # Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    remaining = {i: set(d) for i, d in enumerate(deps)}
    while True:
        ready = [i for i, waits in remaining.items() if not waits]
        if not ready:
            break
        for i in ready:
            del remaining[i]
        for waits in remaining.values():
            waits.difference_update(ready)
    if remaining:
        cycle = sorted(remaining)
        raise Invalid(
            ("body", "branches", cycle[0], "depends_on"),
            f"depends_on has a cycle through branches {cycle}",
        )
    return deps
