"""Run one coordinator instance: ``python -m coordinator`` (settings from ``TXN_*``)."""

from __future__ import annotations

import logging

import uvicorn

from coordinator.api import create_app
from coordinator.settings import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
