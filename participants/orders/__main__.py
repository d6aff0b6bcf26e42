"""Run one orders instance: ``python -m participants.orders`` (settings from ``TXNP_*``)."""

from __future__ import annotations

from participants.orders.app import OrdersSettings, create_app
from participants.sdk.logs import serve


def main() -> None:
    settings = OrdersSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
