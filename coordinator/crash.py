"""Named crash points: off unless configured; when hit, the process exits at once, as SIGKILL
would (no cleanup, no flush, no reply). Used by the coordinator and the participant SDK."""

from __future__ import annotations

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
        "before_final",
        "after_step",
        "mid_compensate",
    }
)
PARTICIPANT_POINTS = frozenset(
    {
        "after_prepare_before_reply",
        "after_commit_before_reply",
        "after_action_before_reply",
        "after_compensate_before_reply",
    }
)


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
