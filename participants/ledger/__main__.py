"""Run one ledger instance: ``python -m participants.ledger`` (settings from ``TXNP_*``)."""

from __future__ import annotations

import uvicorn

from participants.ledger.app import create_app
from participants.sdk import ParticipantSettings


def main() -> None:
    settings = ParticipantSettings(name="ledger")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
