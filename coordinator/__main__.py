"""Run one coordinator instance: ``python -m coordinator`` (settings from ``TXN_*``)."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from coordinator.api import create_app
from coordinator.settings import get_settings
from participants.sdk.logs import configure


def main() -> None:
    try:
        settings = get_settings()
        configure(settings.log_format, settings.log_level)
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
        log_config=None,  # uvicorn's lines go through ours (participants.sdk.logs)
        access_log=False,
        # X-Forwarded-Proto/-For only from the proxies named: behind a TLS-terminating proxy
        # the console then sees https (its cookie is Secure, its origin check matches).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )


if __name__ == "__main__":
    main()
