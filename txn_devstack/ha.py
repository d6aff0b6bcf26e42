"""A replicated, automatically failed-over Postgres for the dev stack: one etcd and three
Postgres nodes under Patroni, with synchronous replication, all on loopback ports, run as the
unprivileged account the plain clusters use and stopped by the PIDs started here.

Patroni holds the leader key in etcd (Raft); in ``synchronous_mode`` it promotes only a
synchronous standby, so a decision the primary acknowledged is never lost by a failover, and
with ``primary_start_timeout: 0`` a crashed primary is failed over instead of restarted. The
service's DSN lists every node with ``target_session_attrs=read-write``: clients find the
primary whichever node it is (docs/operations.md, "The log on a highly available Postgres").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from txn_devstack.postgres import (
    DEFAULT_MAX_CONNECTIONS,
    SUPERUSER,
    SUPERUSER_RESERVED,
    RunAs,
    free_port,
)

log = logging.getLogger(__name__)

# Debian's packages (patroni 3.0, etcd-server 3.4).
PATRONI, ETCD = "/usr/bin/patroni", "/usr/bin/etcd"
INSTALL_HINT = "apt-get install patroni etcd-server"


class HaUnavailable(RuntimeError):
    """Patroni or etcd is not installed."""


def ha_installed() -> bool:
    return os.access(PATRONI, os.X_OK) and os.access(ETCD, os.X_OK)


@dataclass
class Node:
    name: str
    pg_port: int
    rest_port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def patroni_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def postmaster_pid(self) -> int | None:
        """The node's Postgres server, from its pid file (None when it is not running)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None


class PatroniGroup:
    """``nodes`` Postgres servers for one purpose (the log, or one participant's database)."""

    def __init__(
        self,
        scope: str,
        root: Path,
        bindir: Path,
        run_as: RunAs,
        logs: Path,
        fsync: bool = True,
        nodes: int = 3,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not ha_installed():
            raise HaUnavailable(f"Patroni and etcd are needed for an HA database: {INSTALL_HINT}")
        self.scope = scope
        self.root = root
        self.bindir = bindir
        self.run_as = run_as
        self.logs = logs
        self.fsync = fsync
        self.max_connections = max_connections
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [
            Node(f"{scope}{i}", free_port(), free_port(), root / f"{scope}{i}")
            for i in range(1, nodes + 1)
        ]

    # -- addresses -----------------------------------------------------------------------

    def dsn(self, database: str) -> str:
        """Every node, the primary found by ``target_session_attrs=read-write``."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    def node_dsn(self, node: Node, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{node.pg_port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._start_etcd()
        for node in self.nodes:
            self._start_node(node)
        self.wait_healthy(timeout_s)
        self._warn_if_sized_before()

    def _spawn(self, argv: list[str], log_name: str, cwd: Path) -> subprocess.Popen[bytes]:
        with open(self.logs / log_name, "ab") as out:
            proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": f"{self.bindir}:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"},
                **self.run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
        return proc

    def _start_etcd(self) -> None:
        home = self.root / "etcd"
        home.mkdir(parents=True, exist_ok=True)
        self.run_as.chown_tree(self.root)
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = self._spawn(
            [
                ETCD,
                "--name=etcd1",
                f"--data-dir={home / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd1={peer}",
                "--initial-cluster-state=new",
            ],
            f"{self.scope}-etcd.log",
            home,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.etcd.poll() is not None:
                raise RuntimeError(f"etcd exited at start; see {self.logs}")
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{client}/health", timeout=1) as reply,
            ):
                if json.loads(reply.read()).get("health") == "true":
                    return
            time.sleep(0.1)
        raise TimeoutError("etcd did not become healthy")

    def _config(self, node: Node) -> dict[str, Any]:
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication replicator 127.0.0.1/32 trust",
        ]
        return {
            "scope": self.scope,
            "namespace": "/txn/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    # Failover within seconds: the leader key lives ttl seconds unrenewed.
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    # Promote only a synchronous standby: nothing acknowledged is lost.
                    "synchronous_mode": True,
                    # A crashed primary is failed over, not restarted in place.
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "max_prepared_transactions": 200,
                            # Every node alike (Patroni keeps it in etcd): a standby
                            # refuses to run with fewer than its primary.
                            "max_connections": self.max_connections,
                            "superuser_reserved_connections": SUPERUSER_RESERVED,
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "synchronous_commit": "on",
                            "fsync": "on" if self.fsync else "off",
                            # pg_rewind (a failed primary rejoining) needs it, fsync or not.
                            "full_page_writes": "on",
                            "shared_buffers": "64MB",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(self.bindir),
                "pgpass": str(node.home / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": SUPERUSER},
                },
                "parameters": {"unix_socket_directories": str(node.home)},
                # A node that cannot rewind onto the new timeline is rebuilt from the leader.
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
                "pg_hba": hba,
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }

    def _start_node(self, node: Node) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        config = node.home / "patroni.yml"
        # JSON is YAML too: no YAML writer needed.
        config.write_text(json.dumps(self._config(node), indent=2))
        self.run_as.chown_tree(node.home)
        node.proc = self._spawn([PATRONI, str(config)], f"{node.name}.log", node.home)

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Until one leader runs and every other node streams from it, one synchronously."""
        deadline = time.monotonic() + timeout_s
        members: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"patroni {node.name} exited; see {self.logs}")
            members = self.members()
            roles = sorted(m.get("role", "") for m in members)
            running = all(m.get("state") in ("running", "streaming") for m in members)
            whole = len(members) == len(self.nodes) and running
            if whole and roles.count("leader") == 1 and "sync_standby" in roles:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.scope}: no healthy leader with a sync standby: {members}")

    def _warn_if_sized_before(self) -> None:
        """The bootstrap's max_connections is the group's first start's: on a later start with
        other pool sizes etcd still holds the old value (`patronictl edit-config` changes it)."""
        for node in self.nodes:
            url = f"http://127.0.0.1:{node.rest_port}/config"
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=1) as reply,
            ):
                parameters = json.loads(reply.read()).get("postgresql", {}).get("parameters", {})
                held = int(parameters.get("max_connections", self.max_connections))
                if held < self.max_connections:
                    log.warning(
                        "%s keeps max_connections %s from its first start, below the %s its "
                        "services need now: start it in a new state folder",
                        self.scope,
                        held,
                        self.max_connections,
                    )
                return

    def wait_database(self, database: str, timeout_s: float = 30.0) -> None:
        """Until ``database`` exists on every node: a client listing every host stops at the
        first that refuses it (asyncpg, like libpq, tries the next host only when one cannot
        be reached), so a standby that has not replayed its creation yet would fail it."""
        query = "SELECT 1 FROM pg_database WHERE datname = $1"
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while not asyncio.run(_fetchval(self.node_dsn(node, "postgres"), query, database)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{database} not on {node.name} after {timeout_s}s")
                time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Patroni stops its Postgres on SIGTERM; a server left behind (its Patroni killed)
        is stopped by the PID in its pid file; then etcd. Idempotent."""
        for node in self.nodes:
            if node.patroni_pid is not None:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
            pid = node.postmaster_pid()
            if pid is not None:
                _stop_postmaster(pid, timeout_s)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait()

    # -- what runs where -----------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view (``GET /cluster`` of the first node that answers)."""
        for node in self.nodes:
            url = f"http://127.0.0.1:{node.rest_port}/cluster"
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=1) as reply,
            ):
                return list(json.loads(reply.read()).get("members", []))
        return []

    def roles(self) -> dict[str, str]:
        return {m["name"]: m.get("role", "") for m in self.members() if "name" in m}

    def leader(self) -> Node | None:
        name = next((n for n, r in self.roles().items() if r == "leader"), None)
        return next((node for node in self.nodes if node.name == name), None)

    def state(self) -> list[dict[str, Any]]:
        """For stack.json: each node's name, Postgres port, server PID and role."""
        roles = self.roles()
        return [
            {
                "name": n.name,
                "port": n.pg_port,
                "pid": n.postmaster_pid(),
                "patroni_pid": n.patroni_pid,
                "role": roles.get(n.name, "down"),
                "max_connections": self.max_connections,
            }
            for n in self.nodes
        ]

    # -- faults --------------------------------------------------------------------------

    def kill_primary(self) -> Node:
        """SIGKILL the leader's postmaster; Patroni fails over to the sync standby."""
        leader = self.leader()
        if leader is None:
            raise RuntimeError(f"{self.scope}: no leader to kill")
        pid = leader.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{self.scope}: leader {leader.name} has no running server")
        os.kill(pid, signal.SIGKILL)
        return leader

    def switchover(self) -> tuple[str, str]:
        """A planned switchover to the synchronous standby; (old leader, new leader)."""
        roles = self.roles()
        leader = next(n for n, r in roles.items() if r == "leader")
        candidate = next(n for n, r in roles.items() if r == "sync_standby")
        node = next(n for n in self.nodes if n.name == leader)
        body = json.dumps({"leader": leader, "candidate": candidate}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{node.rest_port}/switchover",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
        return leader, candidate

    def wait_leader_other_than(self, old: str, timeout_s: float = 60.0) -> str:
        """Until a node other than ``old`` leads and its Postgres takes writes (Patroni names
        the leader as it takes the key, a moment before the promotion ends)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader.name != old:
                dsn = self.node_dsn(leader, "postgres")
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    if asyncio.run(_fetchval(dsn, "SELECT NOT pg_is_in_recovery()")):
                        return leader.name
            time.sleep(0.1)
        raise TimeoutError(f"{self.scope}: no new leader after {old} within {timeout_s}s")


async def _fetchval(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def _stop_postmaster(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
