"""Engine construction shared by the coordinator and the participant SDK."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def plain_dsn(dsn: str) -> str:
    """The DSN as asyncpg takes it (``postgresql://``), from that or SQLAlchemy's form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql://" + dsn[len(prefix) :]
    raise ValueError(f"not a Postgres DSN: {redacted(dsn)!r}")


def redacted(dsn: str) -> str:
    """``dsn`` fit to print: its password (in the URL or a ``password=`` parameter) masked."""
    if "://" not in dsn:
        # libpq's key=value form: mask every password value.
        return re.sub(r"((?:ssl)?password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn, flags=re.I)
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
    max_overflow: int | None = None,
    autocommit: bool = False,
    application_name: str = "",
    lock_timeout_ms: int | None = None,
) -> AsyncEngine:
    """A SQLAlchemy engine whose connections asyncpg opens from ``dsn`` itself, as the raw
    asyncpg pools do: the DSN is read once, by one parser, whatever libpq form it has (several
    hosts ``h1:5432,h2:5432`` with ``target_session_attrs``, ``sslmode``, ``sslrootcert``,
    ...). SQLAlchemy's own URL parsing accepts neither the host list nor the TLS options.

    It opens at most ``pool_size + max_overflow`` connections (``max_overflow``: as many as
    ``pool_size`` unless given)."""
    plain = plain_dsn(dsn)
    settings = server_settings(application_name, lock_timeout_ms=lock_timeout_ms)

    async def connect() -> Any:
        return await asyncpg.connect(plain, server_settings=settings)

    kwargs: dict[str, Any] = {}
    if autocommit:
        # Single-statement writes commit by themselves: no BEGIN/COMMIT round trips.
        kwargs["isolation_level"] = "AUTOCOMMIT"
    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=connect,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=False,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        **kwargs,
    )
