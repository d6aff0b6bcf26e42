"""The listing's cursor: a position that round-trips to the microsecond, and any string of its
documented form (the OpenAPI pattern) is a position, anything else a ValueError."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.cursor import CURSOR_PATTERN, decode_cursor, encode_cursor
from participants.sdk.wire import GID_PATTERN

gids = st.from_regex(GID_PATTERN, fullmatch=True)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(5000, 1, 1), timezones=st.just(UTC)
)


@given(times, gids)
def test_a_position_round_trips(at: datetime, gid: str) -> None:
    cursor = encode_cursor(at, gid)
    assert CURSOR_PATTERN.fullmatch(cursor)
    assert decode_cursor(cursor) == (at, gid)


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_string_of_the_documented_form_is_a_position(cursor: str) -> None:
    at, gid = decode_cursor(cursor)
    assert at.tzinfo is UTC and 1970 <= at.year <= 5138  # Postgres' timestamptz holds it
    assert GID_PATTERN.fullmatch(gid)


@pytest.mark.parametrize("bad", ["", "_g", "12", "12_", "x_g", "1_-g", "1_g/", "9" * 18 + "_g"])
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="next_cursor"):
        decode_cursor(bad)
