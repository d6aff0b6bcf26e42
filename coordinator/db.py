"""Engine construction shared by the coordinator and the participant SDK."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# The coordinator's log connections' application_name prefix (pg_stat_activity; fault tools).
LOG_APPLICATION_NAME = "txn-coordinator"


def async_url(dsn: str) -> str:
    """Accept a plain ``postgresql://`` DSN and name the asyncpg driver for SQLAlchemy."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    raise ValueError(f"not a Postgres DSN: {dsn!r}")


def plain_dsn(dsn: str) -> str:
    """The same DSN as asyncpg itself takes (``postgresql://``)."""
    return "postgresql://" + async_url(dsn)[len("postgresql+asyncpg://") :]


def redacted(dsn: str) -> str:
    """``dsn`` fit to print: its password (in the URL or a ``password=`` parameter) masked."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if sep else ''}@{hosts}"
    query = "&".join(
        f"{k}=***" if k.lower() in ("password", "sslpassword") else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def server_settings(
    application_name: str = "",
    synchronous_commit: bool = True,
    lock_timeout_ms: int | None = None,
    generic_plans: bool = False,
) -> dict[str, str]:
    """Session settings sent when a connection opens (SQLAlchemy's engines and asyncpg's pools
    alike)."""
    # Sent either way: a server or database tuned to `off` must not make a decision or an
    # outcome asynchronous (rule 2, 3); only redoable progress is relaxed (rule 4).
    settings: dict[str, str] = {"synchronous_commit": "on" if synchronous_commit else "off"}
    if generic_plans:
        # For connections whose every statement finds its rows by primary key: left to choose,
        # Postgres re-plans a statement with array parameters (the coalesced writes) at every
        # execution, which cost the log more than running it (docs/decisions.md).
        settings["plan_cache_mode"] = "force_generic_plan"
    if application_name:
        # Shows in pg_stat_activity: operators (and the fault tools) can tell whose it is.
        settings["application_name"] = application_name[:63]
    if lock_timeout_ms is not None:
        settings["lock_timeout"] = str(int(lock_timeout_ms))
    return settings


def make_engine(
    dsn: str,
    pool_size: int = 10,
    autocommit: bool = False,
    application_name: str = "",
    lock_timeout_ms: int | None = None,
) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    settings = server_settings(application_name, lock_timeout_ms=lock_timeout_ms)
    if settings:
        kwargs["connect_args"] = {"server_settings": settings}
    if autocommit:
        # Single-statement writes commit by themselves: no BEGIN/COMMIT round trips.
        kwargs["isolation_level"] = "AUTOCOMMIT"
    return create_async_engine(
        async_url(dsn),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        **kwargs,
    )
