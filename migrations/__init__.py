"""Alembic migrations: one script directory per database kind (the coordinator's log, and each
participant service's schema). ``upgrade(dsn, target)`` applies them programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent
TARGETS = ("coordinator", "ledger", "inventory", "payments", "shipping", "orders")


def config(dsn: str, target: str) -> Config:
    if target not in TARGETS:
        raise ValueError(f"unknown migration target {target!r}; known: {', '.join(TARGETS)}")
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / target))
    # ConfigParser interpolation would read '%' in a password as a placeholder.
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return cfg


def upgrade(dsn: str, target: str, revision: str = "head") -> None:
    command.upgrade(config(dsn, target), revision)
