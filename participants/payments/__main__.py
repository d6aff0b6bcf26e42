"""Run one payments instance: ``python -m participants.payments`` (settings from ``TXNP_*``)."""

from __future__ import annotations

import uvicorn

from participants.payments.app import PaymentsSettings, create_app


def main() -> None:
    settings = PaymentsSettings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        # No proxy in front of the services we run; uvicorn would parse headers for one anyway.
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
