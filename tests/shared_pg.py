"""One Postgres server for the tests ``./run mutation`` runs once per mutant (the SDK's barrier,
the log's status guard): booting a cluster per mutant would cost more than the mutants.

``./run mutation`` boots one cluster first (``python -m tests.shared_pg boot FOLDER``: the
devstack's Cluster, as the devstack's unprivileged user when run as root), makes and migrates
the two databases below on it, and exports the server's DSN as ``TXN_MUTATION_PG_DSN``; it
stops the server by its PID when the run ends. The tests then share those databases, each
test with gids (and accounts) of its own. In the ordinary test run, with the variable unset,
the same tests take fresh databases on the session stack's log cluster (tests/conftest.py):
they always run, never skip."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from participants.sdk import Participant, ParticipantSettings
from participants.sdk.base import BarrierHook
from participants.sdk.db import make_engine

ENV = "TXN_MUTATION_PG_DSN"
# Database names on the mutation server, and the migration target each is made for.
PARTICIPANT_DB, PARTICIPANT_TARGET = "mutation_participant", "ledger"
LOG_DB, LOG_TARGET = "mutation_log", "coordinator"
# A mutant that drops a lock timeout must fail, not wait for ever on a held barrier key.
STATEMENT_TIMEOUT = "5s"


@dataclass(frozen=True)
class SharedDatabases:
    participant: str  # migrated for the ledger: accounts and the barrier table
    log: str  # migrated for the coordinator: the transactions table


def _on(server_dsn: str, database: str) -> str:
    return f"{server_dsn.rsplit('/', 1)[0]}/{database}"


@pytest.fixture(scope="session")
async def shared_dbs(request: pytest.FixtureRequest) -> AsyncIterator[SharedDatabases]:
    server = os.environ.get(ENV)
    if server:
        yield SharedDatabases(_on(server, PARTICIPANT_DB), _on(server, LOG_DB))
        return
    from tests.conftest import create_db

    pg = request.getfixturevalue("pg")
    participant = await create_db(pg, PARTICIPANT_TARGET)
    await _limit_statements(pg.dsn("postgres"), participant.rsplit("/", 1)[1])
    yield SharedDatabases(participant, await create_db(pg, LOG_TARGET))


async def _limit_statements(server_dsn: str, database: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(
            f"ALTER DATABASE \"{database}\" SET statement_timeout = '{STATEMENT_TIMEOUT}'"
        )
    finally:
        await conn.close()


def let_postgres_in(folder: Path) -> None:
    """Postgres runs as an unprivileged user when the tests run as root: it must reach its data
    under ``folder`` (searchable, not readable, up to the first folder anyone can enter)."""
    folder.chmod(0o711)
    for above in folder.parents:
        if above == Path("/") or above.stat().st_mode & 0o001:
            break
        if os.geteuid() == 0:
            above.chmod(above.stat().st_mode | 0o011)


def boot(folder: Path) -> None:
    """Boot the cluster, make and migrate the databases; print ``PID DSN`` of the server."""
    import asyncio

    from migrations import upgrade
    from txn_devstack.postgres import Cluster, RunAs, find_bindir, free_port

    folder.mkdir(parents=True, exist_ok=True)
    let_postgres_in(folder)
    cluster = Cluster(
        name="mutation",
        data_dir=folder / "data",
        port=free_port(),
        bindir=find_bindir(),
        run_as=RunAs.detect(),
        log_file=folder / "postgres.log",
        fsync=False,
    )
    cluster.init()
    cluster.start()
    try:
        for database, target in ((PARTICIPANT_DB, PARTICIPANT_TARGET), (LOG_DB, LOG_TARGET)):

            async def create(name: str = database) -> None:
                conn = await asyncpg.connect(cluster.dsn("postgres"))
                try:
                    await conn.execute(f'CREATE DATABASE "{name}"')
                finally:
                    await conn.close()

            asyncio.run(create())
            upgrade(cluster.dsn(database), target)
        asyncio.run(_limit_statements(cluster.dsn("postgres"), PARTICIPANT_DB))
    except BaseException:
        cluster.stop()
        raise
    print(cluster.pid, cluster.dsn("postgres"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "boot":
        sys.exit("usage: python -m tests.shared_pg boot FOLDER")
    boot(Path(sys.argv[2]) if sys.argv[2] else Path(tempfile.mkdtemp(prefix="txn-mutation-")))


# The barrier tests' SDK on the participant database (tests/integration/test_barrier_cases.py,
# test_tcc_barrier.py): direct calls, no HTTP.


@pytest.fixture(scope="session")
async def engine(shared_dbs: SharedDatabases) -> AsyncIterator[AsyncEngine]:
    e = make_engine(shared_dbs.participant, pool_size=4)
    try:
        yield e
    finally:
        await e.dispose()


@pytest.fixture
def dsn(shared_dbs: SharedDatabases) -> str:
    return shared_dbs.participant


def make(
    engine: AsyncEngine, lock_timeout_ms: int = 2000, hook: BarrierHook | None = None
) -> Participant:
    settings = ParticipantSettings(
        name="t", dsn="postgresql://x/y", lock_timeout_ms=lock_timeout_ms
    )
    return Participant(settings, engine, barrier_hook=hook)


@pytest.fixture
async def sdk(engine: AsyncEngine) -> AsyncIterator[Participant]:
    p = make(engine)
    try:
        yield p
    finally:
        await p._drop_spare()
