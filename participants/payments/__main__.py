"""Run one payments instance: ``python -m participants.payments`` (settings from ``TXNP_*``)."""

from __future__ import annotations

from participants.payments.app import PaymentsSettings, create_app
from participants.sdk.logs import serve


def main() -> None:
    settings = PaymentsSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
