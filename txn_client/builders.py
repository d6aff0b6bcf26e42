"""Submission bodies (TxnIn in /openapi.json), built step by step.

Each builder draws its gid when it is made, so submitting the same builder again (after a
timeout, a lost answer, a restart that kept the gid) is the same logical submission: the
coordinator answers 200 with the existing transaction. Message modes have no builder: the
coordinator has no such mode.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# The coordinator's rule for gids (its wire.GID_PATTERN), checked early for a clear error.
GID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def new_gid() -> str:
    """Time-ordered, like UUIDv7: 48 bits of milliseconds, then 80 random bits (the same form
    as the gids the coordinator makes, so listings sort by submission time either way)."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    raw = f"{value:032x}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def _gid(gid: str | None) -> str:
    if gid is None:
        return new_gid()
    if not GID_PATTERN.match(gid):
        raise ValueError(f"a gid is 1-128 of [A-Za-z0-9._:-], starting alphanumeric: {gid!r}")
    return gid


@dataclass(frozen=True)
class RetryPolicy:
    """How the coordinator retries a saga's failing action before compensating (the server's
    RetryPolicy; these defaults are its defaults)."""

    max_attempts: int = 8  # attempts of an action, first included (1-100)
    initial_s: float = 0.2  # wait before the first retry
    multiplier: float = 2.0  # growth of the wait per retry
    max_s: float = 5.0  # cap of the wait between retries
    jitter: float = 0.5  # fraction of each wait drawn at random (0: none)

    def body(self) -> dict[str, Any]:
        return asdict(self)


class _Builder:
    def __init__(self, gid: str | None, timeout_s: float | None) -> None:
        self.gid = _gid(gid)
        self.timeout_s = timeout_s

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gid": self.gid}
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.body()!r})"


class TwoPhase(_Builder):
    """A two-phase commit: every branch prepares, then all commit or all abort.

    ``timeout_s``: abort if not every branch has prepared by then (the server's default: 30).
    """

    def __init__(self, gid: str | None = None, timeout_s: float | None = None) -> None:
        super().__init__(gid, timeout_s)
        self.branches: list[dict[str, Any]] = []

    def branch(
        self, participant: str, action: str, payload: Mapping[str, Any] | None = None
    ) -> TwoPhase:
        """Adds a branch: ``action`` is a path on the participant, e.g. /accounts/adjust."""
        self.branches.append(
            {"participant": participant, "action": action, "payload": dict(payload or {})}
        )
        return self

    def body(self) -> dict[str, Any]:
        return {**self._common(), "mode": "2pc", "branches": [dict(b) for b in self.branches]}


class Tcc(_Builder):
    """A TCC transaction (try / confirm / cancel): every branch's try runs in parallel and
    reserves its resource; when all succeed every branch is confirmed, otherwise every branch
    is cancelled. The three paths are the ones the participant declares for its try.

    ``timeout_s``: cancel if not every try has succeeded by then (the server's default: 30).
    """

    def __init__(self, gid: str | None = None, timeout_s: float | None = None) -> None:
        super().__init__(gid, timeout_s)
        self.branches: list[dict[str, Any]] = []

    def branch(
        self,
        participant: str,
        try_: str,
        confirm: str,
        cancel: str,
        payload: Mapping[str, Any] | None = None,
    ) -> Tcc:
        """Adds a branch: ``try_`` (``try`` on the wire), ``confirm`` and ``cancel`` are paths
        on the participant, e.g. /tcc/adjust, /tcc/adjust/confirm, /tcc/adjust/cancel."""
        self.branches.append(
            {
                "participant": participant,
                "try": try_,
                "confirm": confirm,
                "cancel": cancel,
                "payload": dict(payload or {}),
            }
        )
        return self

    def body(self) -> dict[str, Any]:
        return {**self._common(), "mode": "tcc", "branches": [dict(b) for b in self.branches]}


@dataclass(frozen=True)
class Step:
    """One saga step, for ``Saga.parallel``."""

    participant: str
    action: str
    compensation: str
    payload: Mapping[str, Any] | None = None


class Saga(_Builder):
    """A saga: steps run forward; when one fails for good, what ran is compensated in reverse.

    Steps are numbered from 0 in the order they are added. Without any ``depends_on`` they run
    one after another; as soon as one step gives ``depends_on``, the steps form exactly the
    graph given (``depends_on=[]``: a step that starts at once). ``timeout_s``: compensate if
    the forward part has not finished by then (the server's default: 30).
    """

    def __init__(
        self,
        gid: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(gid, timeout_s)
        self.retry = retry
        self.steps: list[dict[str, Any]] = []

    def step(
        self,
        participant: str,
        action: str,
        compensation: str,
        payload: Mapping[str, Any] | None = None,
        depends_on: Sequence[int] | None = None,
    ) -> Saga:
        step: dict[str, Any] = {
            "participant": participant,
            "action": action,
            "compensation": compensation,
            "payload": dict(payload or {}),
        }
        if depends_on is not None:
            step["depends_on"] = [int(i) for i in depends_on]
        self.steps.append(step)
        return self

    def parallel(self, *steps: Step, after: Sequence[int] = ()) -> list[int]:
        """Adds ``steps`` to run side by side once the steps ``after`` have succeeded (none:
        at once); returns their indexes, for a later step's ``depends_on``."""
        first = len(self.steps)
        for s in steps:
            self.step(s.participant, s.action, s.compensation, s.payload, depends_on=after)
        return list(range(first, len(self.steps)))

    @property
    def last(self) -> int:
        """The index of the step added last."""
        if not self.steps:
            raise ValueError("the saga has no steps yet")
        return len(self.steps) - 1

    def body(self) -> dict[str, Any]:
        out = {**self._common(), "mode": "saga", "branches": [dict(s) for s in self.steps]}
        if self.retry is not None:
            out["retry"] = self.retry.body()
        return out


class NamedSaga(_Builder):
    """A saga from the coordinator's catalogue (e.g. "transfer"), made from ``input``."""

    def __init__(
        self,
        name: str,
        input: Mapping[str, Any],
        gid: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(gid, timeout_s)
        self.name = name
        self.input = dict(input)
        self.retry = retry

    def body(self) -> dict[str, Any]:
        out = {**self._common(), "saga": self.name, "input": dict(self.input)}
        if self.retry is not None:
            out["retry"] = self.retry.body()
        return out


Submission = TwoPhase | Saga | Tcc | NamedSaga | Mapping[str, Any]


def submission_body(txn: Submission) -> dict[str, Any]:
    """The JSON body of ``txn``. A plain mapping without a gid gets one here, so the retries of
    this one call resend the same logical submission (the mapping itself is left as it is)."""
    if isinstance(txn, _Builder):
        return txn.body()
    body = dict(txn)
    if body.get("gid") is None:
        body["gid"] = new_gid()
    return body
