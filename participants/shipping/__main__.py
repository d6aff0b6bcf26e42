"""Run one shipping instance: ``python -m participants.shipping`` (settings from ``TXNP_*``)."""

from __future__ import annotations

from participants.sdk.logs import serve
from participants.shipping.app import ShippingSettings, create_app


def main() -> None:
    settings = ShippingSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
