"""Request and response bodies of the REST API."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from participants.sdk.strict import Integer
from participants.sdk.wire import GID_PATTERN, MAX_BRANCHES
from sagas.policy import RetryPolicy

MAX_PAYLOAD_BYTES = 64 * 1024
PATH_PATTERN = r"^/[A-Za-z0-9._~/-]{0,511}$"
STATUSES = (
    "preparing",
    "committing",
    "committed",
    "aborting",
    "aborted",
    "running",
    "compensating",
)


class BranchIn(BaseModel):
    # Strict, as the OpenAPI document states the body: a number is a JSON number (not a string
    # or a boolean), a string a JSON string.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    participant: str = Field(
        min_length=1, max_length=64, description="A participant name from the registry."
    )
    action: str | None = Field(
        None,
        pattern=PATH_PATTERN,
        description="Path on the participant, e.g. /accounts/adjust (never a URL); required "
        "but for TCC, whose branches give try, confirm and cancel instead.",
    )
    compensation: str | None = Field(
        None, pattern=PATH_PATTERN, description="Saga: the path that undoes the action."
    )
    payload: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[Integer] | None = Field(
        None,
        max_length=MAX_BRANCHES,
        description="Saga: indexes of the branches this one waits for. When no branch gives "
        "depends_on, the steps run one after another in order.",
    )
    # TCC (mode "tcc"): the three paths instead of action and compensation. ``try`` is a Python
    # keyword: the field is ``try_``, named ``try`` on the wire.
    try_: str | None = Field(
        None, alias="try", pattern=PATH_PATTERN, description="TCC: the path of the try."
    )
    confirm: str | None = Field(
        None, pattern=PATH_PATTERN, description="TCC: the path that confirms the try."
    )
    cancel: str | None = Field(
        None, pattern=PATH_PATTERN, description="TCC: the path that cancels the try."
    )

    @property
    def forward(self) -> str:
        """The path called first: the action (2PC, saga), or the try (TCC)."""
        return self.try_ or self.action or ""

    @property
    def undo(self) -> str | None:
        """The path that undoes it: the saga's compensation, or the TCC cancel."""
        return self.cancel if self.try_ is not None else self.compensation

    def dump(self) -> dict[str, Any]:
        """As given (the wire's names), without the fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_TCC_FIELDS = ("try_", "confirm", "cancel")


class TxnIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    gid: str | None = Field(
        None,
        pattern=GID_PATTERN.pattern,
        description="1-128 of [A-Za-z0-9._:-]; generated if absent.",
    )
    mode: Literal["2pc", "saga", "tcc"] | None = Field(
        None, description="Required unless `saga` is."
    )
    branches: list[BranchIn] | None = Field(None, min_length=1, max_length=MAX_BRANCHES)
    saga: str | None = Field(
        None, max_length=64, description="Name of a saga from the catalogue, instead of branches."
    )
    input: dict[str, Any] | None = Field(None, description="The named saga's input.")
    retry: RetryPolicy | None = Field(None, description="Saga: retry policy of the actions.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="2PC: abort if not fully prepared by then; TCC: cancel if not every try "
        "succeeded by then; saga: compensate if the forward part has not finished by then "
        "(default 30).",
    )

    def request_hash(self) -> str:
        """Hash of everything but the gid: resubmitting the same body is idempotent."""
        body = self.model_dump(mode="json", exclude={"gid"})
        for branch in body.get("branches") or ():
            # The TCC fields count only when given: a 2PC or saga body hashes as it always did.
            for name in _TCC_FIELDS:
                if branch.get(name, 0) is None:
                    del branch[name]
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class BranchOut(BaseModel):
    idx: int
    depends_on: list[int] | None = None
    participant: str
    action: str = Field(description="The action; TCC: the try.")
    compensation: str | None = Field(description="Saga: the compensation; TCC: the cancel.")
    confirm: str | None = Field(None, description="TCC: the confirm.")
    status: str
    attempts: int
    last_error: str | None
    resolved_by: str | None = Field(
        None, description="The operator who declared this branch compensated by hand."
    )


class EventOut(BaseModel):
    at: datetime
    kind: str
    branch: int | None
    detail: dict[str, Any] | None


class TxnOut(BaseModel):
    gid: str
    mode: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    branches: list[BranchOut]
    events: list[EventOut] | None = None


# Something besides white space (as str.strip() has it), and no NUL (which the log refuses).
_SPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOTE_PATTERN = rf"^[^\u0000]*[^\u0000{_SPACE}][^\u0000]*$"


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(
        min_length=1,
        max_length=1000,
        pattern=NOTE_PATTERN,
        description="Why: kept in the transaction's timeline with the token's name.",
    )


class PageOut(BaseModel):
    items: list[TxnOut]
    next_cursor: str | None


def new_gid() -> str:
    """Time-ordered, like UUIDv7: 48 bits of milliseconds, then 80 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | rand
    raw = f"{value:032x}"
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def payload_size(payload: dict[str, Any]) -> int:
    return len(orjson.dumps(payload))
