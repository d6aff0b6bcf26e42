"""Numbers as JSON Schema (and so the coordinator's OpenAPI document) counts them. The request
models are strict: a number is a JSON number, never a string or a boolean. ``Integer`` is an
integer as JSON Schema has it: any number without a fractional part, ``5`` and ``5.0`` alike."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]
