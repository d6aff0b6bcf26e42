"""Log lines for the coordinator, the SDK and the demo services, with the standard library:
``text`` (one readable line, the transaction context appended) or ``json`` (one object per
line: ``ts``, ``level``, ``logger``, ``msg``, and ``gid``, ``epoch``, ``branch`` when the call
is about a transaction, ``exc`` with a traceback). Chosen over structlog: no new dependency,
and no line is written per transaction on the hot path (those are DEBUG)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import orjson
from fastapi import FastAPI

from participants.sdk.settings import ParticipantSettings

LogFormat = Literal["text", "json"]
CONTEXT = ("gid", "epoch", "branch")


class TextFormatter(logging.Formatter):
    """A readable line; the transaction context a call passed as extras is appended, so one
    grep follows a transaction across processes."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT if hasattr(record, k))
        return f"{line} [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(log_format: LogFormat = "text", level: str = "INFO") -> None:
    """Send every log line to stderr in ``log_format`` from ``level`` up, replacing whatever
    was configured before (``txn`` configures a terse default for its other commands)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # uvicorn's own loggers go through the same handler and format.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def serve(app: FastAPI, settings: ParticipantSettings) -> None:
    """Run a participant service: logging as its settings say (``TXNP_LOG_FORMAT``,
    ``TXNP_LOG_LEVEL``), then uvicorn on its host and port."""
    import uvicorn

    configure(settings.log_format, settings.log_level)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through ours
        access_log=False,
        # No proxy in front of the services we run; uvicorn would parse headers for one anyway.
        proxy_headers=False,
    )
