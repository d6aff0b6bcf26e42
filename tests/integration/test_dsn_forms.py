"""DSNs as users write them, for every connection the coordinator and the SDK open (the log's
raw asyncpg pools, SQLAlchemy engines, migrations): several hosts with
``target_session_attrs=read-write`` where the first host is down or read-only, and TLS with
``sslmode=verify-full`` against a cluster serving a self-signed certificate."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from coordinator.pglog import PgLog
from coordinator.records import BranchProgress
from migrations import upgrade
from participants.sdk.db import make_engine
from tests.conftest import create_db
from tests.contract.test_logstore_contract import LONG, new_txn
from tests.helpers import api_client, branch_call, ledger_app, secured, unique
from txn_devstack.postgres import Cluster, free_port
from txn_devstack.stack import Stack, run_in_thread


def extra_cluster(stack: Stack, name: str, settings: dict[str, str]) -> Cluster:
    """A cluster beside the session's log cluster (same binaries, same account)."""
    log = stack.clusters["log"]
    root = log.data_dir.parent / f"{name}-{unique('x')}"
    cluster = Cluster(
        name=name,
        data_dir=root / "data",
        port=free_port(),
        bindir=log.bindir,
        run_as=log.run_as,
        log_file=root.parent / f"{root.name}.log",
        fsync=False,
        settings=settings,
    )
    cluster.init()
    return cluster


@pytest.fixture(scope="module")
def read_only(stack: Stack) -> Iterator[Cluster]:
    """A live server that takes connections but is read-only (as a standby is)."""
    cluster = extra_cluster(stack, "readonly", {"default_transaction_read_only": "on"})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def mirror_database(cluster: Cluster, name: str) -> None:
    conn = await asyncpg.connect(cluster.dsn("postgres"))
    try:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def two_hosts(first_port: int, dsn: str) -> str:
    """``dsn`` (one host, on 127.0.0.1) with ``first_port`` listed before its own host."""
    head, _, rest = dsn.partition("@127.0.0.1:")
    return f"{head}@127.0.0.1:{first_port},127.0.0.1:{rest}?target_session_attrs=read-write"


async def uses_every_connection(dsn: str) -> None:
    """The coordinator's log through ``dsn``: the raw pools (insert, a saga progress write)
    and the SQLAlchemy engine (claims, pages, the ended question), each on the writable host."""
    store = PgLog.connect(dsn, pool_size=2)
    gid = unique("dsn")
    try:
        await store.insert(new_txn(gid), "a", LONG)  # the hot pool
        progress = BranchProgress("succeeded", 1, None)
        await store.write_progress(gid, 1, 0, progress, "action:succeeded", None)  # progress
        assert (await store.get(gid)) is not None
        assert gid not in await store.ended([gid])  # the engine: live, so left out
        hot, progress = await store._pools()
        for pool in (hot, progress):
            async with pool.acquire() as conn:
                assert not await conn.fetchval("SELECT pg_is_in_recovery()")
                assert await conn.fetchval("SHOW transaction_read_only") == "off"
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SHOW transaction_read_only"))).scalar() == "off"
    finally:
        await store.close()


@pytest.mark.parametrize("first", ["down", "read-only"])
async def test_several_hosts_reach_the_writable_one(
    first: str, log_dsn: str, ledger_dsn: str, read_only: Cluster
) -> None:
    first_port = free_port() if first == "down" else read_only.port
    if first == "read-only":
        # As on a standby, the databases exist there too.
        for dsn in (log_dsn, ledger_dsn):
            await mirror_database(read_only, dsn.rsplit("/", 1)[1])
    await uses_every_connection(two_hosts(first_port, log_dsn))

    # Migrations and a participant's engine through the same form.
    dsn = two_hosts(first_port, ledger_dsn)
    run_in_thread(lambda: upgrade(dsn, "ledger"))
    app = ledger_app(secured(name="ledger1", dsn=dsn))
    gid = unique("dsn")
    async with (
        app.router.lifespan_context(app),
        api_client(transport=httpx.ASGITransport(app=app), base_url="http://l") as ledger,
    ):
        opened = await ledger.post("/accounts", json={"id": "acct", "balance": 5})
        assert opened.status_code == 201, opened.text
        move = {"account": "acct", "delta": 1}
        prepared = await branch_call(ledger, "ledger1", "/accounts/adjust", "prepare", gid, 0, move)
        assert prepared.status_code == 200, prepared.text
        committed = await branch_call(ledger, "ledger1", "/txn/2pc/commit", "commit", gid, 0)
        assert committed.status_code == 200, committed.text
    conn = await asyncpg.connect(ledger_dsn)
    try:
        assert await conn.fetchval("SELECT balance FROM accounts WHERE id = 'acct'") == 6
    finally:
        await conn.close()


def self_signed(cert: Path, key: Path, name: str, *extra: str) -> None:
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", *extra],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def tls(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A cluster serving TLS with a self-signed certificate for 127.0.0.1; yields it and the
    certificate (the client's root)."""
    bindir = stack.clusters["log"].bindir
    configured = subprocess.run(
        [str(bindir / "pg_config"), "--configure"], capture_output=True, text=True, check=False
    ).stdout
    if "--with-openssl" not in configured and "--with-ssl=openssl" not in configured:
        # The pgbinaries wheel (what `./run` installs on a machine without PostgreSQL) is
        # built without SSL; the -ra summary names the reason.
        pytest.skip(f"the PostgreSQL in {bindir} is built without SSL: no TLS server to test")
    cluster = extra_cluster(stack, "tls", {})
    cert, key = cluster.data_dir / "server.crt", cluster.data_dir / "server.key"
    self_signed(cert, key, "127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    key.chmod(0o600)
    cluster.run_as.chown_tree(cluster.data_dir)
    cluster.settings.update(ssl="on", ssl_cert_file=str(cert), ssl_key_file=str(key))
    root = tmp_path_factory.mktemp("tls") / "root.crt"
    root.write_bytes(cert.read_bytes())
    cluster.start()
    try:
        yield cluster, root
    finally:
        cluster.stop()


async def test_tls_options_in_the_dsn_reach_every_connection(
    tls: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, root = tls
    log_db = await create_db(cluster, None)
    verified = f"{log_db}?sslmode=verify-full&sslrootcert={root}"
    run_in_thread(lambda: upgrade(verified, "coordinator"))  # migrations over TLS too
    await uses_every_connection(verified)

    store = PgLog.connect(verified, pool_size=2)
    try:
        hot, _ = await store._pools()
        async with hot.acquire() as conn:
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        async with store.engine.connect() as conn:
            query = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert (await conn.execute(query)).scalar() is True
    finally:
        await store.close()

    # A root that did not sign the server's certificate: refused, by the engine as by asyncpg.
    other = tmp_path / "other.crt"
    self_signed(other, tmp_path / "other.key", "other")
    wrong = f"{log_db}?sslmode=verify-full&sslrootcert={other}"
    engine = make_engine(wrong, pool_size=1)
    try:
        with pytest.raises(Exception, match=r"(?i)certificate"):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
