"""Run one inventory instance: ``python -m participants.inventory`` (settings from ``TXNP_*``)."""

from __future__ import annotations

from participants.inventory.app import InventorySettings, create_app
from participants.sdk.logs import serve


def main() -> None:
    settings = InventorySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
