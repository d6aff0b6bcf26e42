"""Run one coordinator instance: ``python -m coordinator`` (settings from ``TXN_*``)."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from coordinator.api import create_app
from coordinator.settings import get_settings


class ContextFormatter(logging.Formatter):
    """Appends the transaction context a log call passed as extras (``gid``, ``epoch``,
    ``branch``), so one grep follows a transaction across processes."""

    KEYS = ("gid", "epoch", "branch")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in self.KEYS if hasattr(record, k))
        return f"{line} [{context}]" if context else line


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        settings = get_settings()
        app = create_app(settings)
    except ValidationError as e:
        # Only where and what: pydantic's own text echoes the input, which may be a secret.
        for error in e.errors():
            where = "TXN_" + "_".join(str(part) for part in error["loc"][:1]).upper()
            print(f"txn serve: {where}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:
        print(f"txn serve: {e}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        # X-Forwarded-Proto/-For only from the proxies named: behind a TLS-terminating proxy
        # the console then sees https (its cookie is Secure, its origin check matches).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


if __name__ == "__main__":
    main()
