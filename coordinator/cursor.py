"""The listing's cursor: the position after the last row of a page, ``<microseconds since the
epoch>_<gid>`` (the order the listing walks: creation time, then gid). Not a secret and not
signed: any string of this form is a position, so a client may hold one as long as it likes,
and anything else is refused (422) before a query runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from participants.sdk.wire import GID_PATTERN

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# At most 17 digits: up to the year 5138, inside what Postgres' timestamptz holds.
CURSOR_PATTERN = re.compile(rf"^(?P<micros>[0-9]{{1,17}})_(?P<gid>{GID_PATTERN.pattern[1:-1]})$")
ONE_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, gid: str) -> str:
    return f"{(created_at - EPOCH) // ONE_MICROSECOND}_{gid}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raise ValueError on anything that is not of the cursor's form."""
    found = CURSOR_PATTERN.fullmatch(cursor)
    if found is None:
        raise ValueError("cursor is not one this API returned (pass back a page's next_cursor)")
    return EPOCH + int(found["micros"]) * ONE_MICROSECOND, found["gid"]
