"""Run one ledger instance: ``python -m participants.ledger`` (settings from ``TXNP_*``)."""

from __future__ import annotations

from participants.ledger.app import LedgerSettings, create_app
from participants.sdk.logs import serve


def main() -> None:
    settings = LedgerSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
