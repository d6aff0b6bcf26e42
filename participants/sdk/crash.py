"""Named crash points: off unless configured; when hit, the process exits at once, as SIGKILL
would (no cleanup, no flush, no reply). Used by the coordinator and the participant SDK.
Named pause points (participant SDK, tests only): a call waits there until a test releases it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70

COORDINATOR_POINTS = frozenset(
    {
        "after_log_insert",
        "after_prepare",
        "after_decision",
        "mid_commit",
        "mid_rollback",
        "before_final",
        "after_step",
        "after_step_failed",
        "mid_compensate",
    }
)
PARTICIPANT_POINTS = frozenset(
    {
        "after_prepare_before_reply",
        "after_commit_before_reply",
        "after_action_before_reply",
        "after_compensate_before_reply",
        "after_try_before_reply",
        "after_confirm_before_reply",
        "after_cancel_before_reply",
    }
)

# Where a participant call can be held (tests only), each inside the call's local transaction:
# the handler's SQL done, PREPARE TRANSACTION / COMMIT PREPARED / the COMMIT not yet sent.
PARTICIPANT_PAUSE_POINTS = frozenset(
    {
        "before_prepare_statement",
        "before_commit_prepared",
        "before_action_commit",
        "before_compensate_commit",
        "before_try_commit",
        "before_confirm_commit",
        "before_cancel_commit",
    }
)
PAUSE_POLL_S = 0.02


class CrashPoints:
    """``point``: the armed crash point name ('' for none). ``marker``: when set, the crash
    happens once: only while that file is absent, and the file is created just before exiting,
    so a restarted process with the same configuration runs on."""

    def __init__(self, point: str, marker: str, known: frozenset[str]) -> None:
        if point and point not in known:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(sorted(known))}")
        self.point = point
        self.marker = Path(marker) if marker else None

    def hit(self, name: str) -> None:
        if name != self.point:
            return
        if self.marker is not None:
            if self.marker.exists():
                return
            self.marker.write_text(f"{os.getpid()}\n")
        log.critical("crash point %s reached: exiting now", name)
        os._exit(CRASH_EXIT_CODE)


class PausePoint:
    """``point``: the armed pause point name ('' for none). ``file``: the base path of the
    handshake with a test: a call reaching the point writes ``<file>.reached`` and waits
    (polling) until ``<file>.release`` exists; once it does, calls pass the point at once."""

    def __init__(self, point: str, file: str, known: frozenset[str]) -> None:
        if point and point not in known:
            raise ValueError(f"unknown pause point {point!r}; known: {', '.join(sorted(known))}")
        if point and not file:
            raise ValueError(f"pause point {point!r} needs a pause file")
        self.point = point
        self.reached = Path(f"{file}.reached") if point else None
        self.release = Path(f"{file}.release") if point else None

    async def hit(self, name: str) -> None:
        if name != self.point or self.reached is None or self.release is None:
            return
        if self.release.exists():
            return
        self.reached.write_text(f"{os.getpid()}\n")
        log.warning("pause point %s reached: waiting for %s", name, self.release)
        while not self.release.exists():  # noqa: ASYNC110 (another process creates it)
            await asyncio.sleep(PAUSE_POLL_S)
        log.warning("pause point %s released", name)
