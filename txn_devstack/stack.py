"""The whole dev stack: clusters, migrations, coordinators and participants, supervised.

    with Stack(StackConfig(state_dir=Path("state"))) as stack:
        ...  # stack.coordinator_url, stack.participants, stack.json in state_dir

Everything started here is stopped here, by PID: on ``stop()``, on leaving the ``with``, at
interpreter exit, and on SIGTERM/SIGINT in ``txn dev``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from coordinator.settings import Settings
from coordinator.sizing import log_pools
from migrations import upgrade
from participants.sdk.settings import ParticipantSettings
from participants.sdk.sizing import engine_pool
from participants.sdk.tokens import new_token, token_entry
from txn_devstack.faultproxy import FaultProxy
from txn_devstack.ha import PatroniGroup
from txn_devstack.postgres import (
    SPARE_CONNECTIONS,
    Cluster,
    RunAs,
    find_bindir,
    free_port,
    max_connections_for,
)
from txn_devstack.services import Service

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_DB = "txn_log"
SHOP = ("orders", "inventory", "payments", "shipping")


@dataclass(frozen=True)
class ParticipantSpec:
    """A participant service the stack runs: its name (registry, cluster, database), the module
    it runs as, and its migration target."""

    name: str
    module: str
    target: str


@dataclass
class StackConfig:
    state_dir: Path
    coordinators: int = 1
    ledgers: int = 3
    # The e-commerce demo's four services (orders, inventory, payments, shipping).
    shop: bool = False
    # A fault proxy (txn_devstack.faultproxy) in front of every participant service and database.
    fault_proxies: bool = False
    # Participants the stack does not run but the coordinators should know (name -> base URL),
    # and their secrets (name -> secret).
    extra_registry: dict[str, str] = field(default_factory=dict)
    extra_secrets: dict[str, str] = field(default_factory=dict)
    # The admin API token every service of the stack accepts; generated when empty.
    api_token: str = ""
    # More token entries ({"name", "sha256", "scopes"}) the coordinators accept.
    extra_tokens: list[dict[str, Any]] = field(default_factory=list)
    # One cluster per participant (default), so one participant's database can crash alone.
    cluster_per_participant: bool = True
    fsync: bool = True
    coordinator_env: dict[str, str] = field(default_factory=dict)
    participant_env: dict[str, str] = field(default_factory=dict)
    supervise: bool = True
    # The log on three Postgres nodes under Patroni (txn_devstack.ha), and the same for these
    # participants' databases.
    log_ha: bool = False
    participant_ha: tuple[str, ...] = ()
    # Connections each server allows beyond what its services' pools open at most: for
    # migrations, tools, and whoever else connects (tests' own databases on the log cluster).
    spare_connections: int = SPARE_CONNECTIONS


def pool_size(env: Mapping[str, str], variable: str, default: int) -> int:
    """The pool size a service started with ``env`` reads: ``env`` added to ours, as Service
    starts it; names case-insensitive, as the settings read them."""
    merged = {key.upper(): value for key, value in {**os.environ, **env}.items()}
    return int(merged.get(variable, default))


def run_sync(make: Callable[[], Any]) -> Any:
    """Run a coroutine to completion on a private loop in a worker thread."""
    return run_in_thread(lambda: asyncio.run(make()))


async def _ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.clusters: dict[str, Cluster] = {}
        # Replicated databases (Patroni groups) by the name a plain cluster would have.
        self.ha: dict[str, PatroniGroup] = {}
        self._ha_roles: dict[str, dict[str, str]] = {}
        self._ha_polled = 0.0
        self.services: dict[str, Service] = {}
        # With fault_proxies: the proxy in front of each participant service and database.
        self.proxies: dict[str, FaultProxy] = {}
        self.db_proxies: dict[str, FaultProxy] = {}
        self.log_dsn = ""
        # Credentials made for this run: the admin API token (also in stack.json, for the
        # user's curl) and each participant's secret (kept in memory only).
        self.api_token = config.api_token or new_token()
        self.participant_secrets: dict[str, str] = {}
        # More entries for stack.json (e.g. "fault_control": the fault tools' URL).
        self.extra_state: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._started = True
        try:
            self._reap_leftovers()
            self._start_clusters()
            self._migrate()
            self._start_services()
        except BaseException:
            self.stop()
            raise
        self.write_state()
        if self.config.supervise:
            self._supervisor = threading.Thread(
                target=self._supervise, name="stack-supervisor", daemon=True
            )
            self._supervisor.start()

    def stop(self) -> None:
        """Stop services, then clusters: everything this stack started, by PID. Idempotent."""
        if not self._started:
            return
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=30)
        with self._lock:
            # Every service is asked at once and then waited for, and so are the clusters after
            # them: the shutdowns overlap (one after another, the session's stack took ~30 s).
            services = list(reversed(list(self.services.values())))
            for service in services:
                service.begin_stop()
            for service in services:
                service.stop()
            for proxy in [*self.proxies.values(), *self.db_proxies.values()]:
                proxy.stop()
            for cluster in self.clusters.values():
                cluster.begin_stop()
            for cluster in self.clusters.values():
                cluster.stop()
            for group in self.ha.values():
                group.stop()
            self._started = False
            self.write_state()
        atexit.unregister(self.stop)

    # -- clusters and databases ----------------------------------------------------------

    def _cluster_root(self, run_as: RunAs) -> Path:
        root = self.state_dir / "clusters"
        if run_as.can_enter(root):
            return root
        # The server's account cannot reach the state folder (e.g. it lies under /root): keep
        # the data in a private folder it can reach, and say where in stack.json.
        tag = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / f"txn-clusters-{tag}"
        log.warning(
            "%s is not reachable by user %s; cluster data goes to %s", root, run_as.user, fallback
        )
        return fallback

    def _start_clusters(self) -> None:
        bindir = find_bindir()
        run_as = RunAs.detect()
        root = self._cluster_root(run_as)
        needs = self.connection_needs()
        names = list(needs)
        unknown = set(self.config.participant_ha) - set(names[1:])
        if unknown:
            raise ValueError(f"--participant-ha names no participant with a database: {unknown}")
        ha = {"log"} if self.config.log_ha else set()
        ha |= set(self.config.participant_ha)
        if self.config.participant_ha and self.config.fault_proxies:
            raise ValueError("a replicated participant database cannot go behind a fault proxy")
        previous = self._previous_ports()
        for name in names:
            if name in ha:
                group = PatroniGroup(
                    name,
                    root / f"ha-{name}",
                    bindir,
                    run_as,
                    self.state_dir / "logs",
                    fsync=self.config.fsync,
                    max_connections=self.max_connections(needs[name]),
                )
                self.ha[name] = group
                group.start()
                continue
            cluster = Cluster(
                name=name,
                data_dir=root / name,
                port=previous.get(name) or free_port(),
                bindir=bindir,
                run_as=run_as,
                log_file=self.state_dir / "logs" / f"pg-{name}.log",
                fsync=self.config.fsync,
                max_connections=self.max_connections(needs[name]),
            )
            self.clusters[name] = cluster
            cluster.init()
            cluster.start()

    def connection_needs(self) -> dict[str, int]:
        """The most connections the stack's services open on each server, by cluster name
        ("log" first): the coordinators on the log's, each participant service on its own
        (or on the log's, without cluster_per_participant). A restart() with other pool sizes
        is not counted: the servers are sized at start."""
        coordinator = log_pools(
            pool_size(
                self.config.coordinator_env,
                "TXN_POOL_SIZE",
                Settings.model_fields["pool_size"].default,
            )
        )
        participant = engine_pool(
            pool_size(
                self.config.participant_env,
                "TXNP_POOL_SIZE",
                ParticipantSettings.model_fields["pool_size"].default,
            )
        )
        needs = {"log": self.config.coordinators * coordinator.most}
        for spec in self.participant_specs():
            host = spec.name if self.config.cluster_per_participant else "log"
            needs[host] = needs.get(host, 0) + participant.most
        return needs

    def max_connections(self, services: int) -> int:
        return max_connections_for(services, self.config.spare_connections)

    def _reap_leftovers(self) -> None:
        """Services a previous run of this state folder started and could not stop (it was
        killed itself): stop them by the PIDs it recorded, once sure each PID is still ours."""
        try:
            state = json.loads((self.state_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return
        for entry in state.get("coordinators", []) + state.get("participants", []):
            pid, url = entry.get("pid"), entry.get("url", "")
            if not isinstance(pid, int) or not url:
                continue
            port = url.rsplit(":", 1)[-1].encode()
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"TXN_PORT=" + port in environ or b"TXNP_PORT=" + port in environ:
                log.warning("stopping %s (pid %s) left over from an earlier run", url, pid)
                stop_pid(pid)

    def _previous_ports(self) -> dict[str, int]:
        try:
            state = json.loads((self.state_dir / "stack.json").read_text())
            return {c["name"]: int(c["port"]) for c in state.get("clusters", [])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def participant_cluster(self, name: str) -> Cluster | PatroniGroup:
        return self.ha.get(name) or self.clusters.get(name) or self._log_host()

    def _log_host(self) -> Cluster | PatroniGroup:
        return self.ha.get("log") or self.clusters["log"]

    def participant_db(self, spec: ParticipantSpec) -> str:
        # A cluster of its own holds one database named after the target (e.g. "ledger"); on a
        # shared cluster every participant needs its own database.
        return spec.target if spec.name in self.clusters or spec.name in self.ha else spec.name

    def participant_specs(self) -> list[ParticipantSpec]:
        specs = [
            ParticipantSpec(f"ledger{i}", "participants.ledger", "ledger")
            for i in range(1, self.config.ledgers + 1)
        ]
        if self.config.shop:
            specs += [ParticipantSpec(name, f"participants.{name}", name) for name in SHOP]
        return specs

    def _migrate(self) -> None:
        log_cluster = self._log_host()
        self.log_dsn = log_cluster.dsn(LOG_DB)
        targets = [(log_cluster, LOG_DB, "coordinator")]
        for spec in self.participant_specs():
            cluster = self.participant_cluster(spec.name)
            targets.append((cluster, self.participant_db(spec), spec.target))
        for cluster, db, target in targets:
            admin = cluster.dsn("postgres")
            run_sync(lambda admin=admin, db=db: _ensure_database(admin, db))  # type: ignore[misc]
            if isinstance(cluster, PatroniGroup):
                run_in_thread(lambda cluster=cluster, db=db: cluster.wait_database(db))  # type: ignore[misc]
            dsn = cluster.dsn(db)
            run_in_thread(lambda dsn=dsn, target=target: upgrade(dsn, target))  # type: ignore[misc]

    # -- services ------------------------------------------------------------------------

    def _start_services(self) -> None:
        logs = self.state_dir / "logs"
        registry: dict[str, str] = {}
        tokens = json.dumps([token_entry("dev-admin", self.api_token, ["admin"])])
        coordinator_ports = [free_port() for _ in range(self.config.coordinators)]
        # Participants' doubt resolvers ask any coordinator (they share one log).
        coordinator_urls = ",".join(f"http://127.0.0.1:{p}" for p in coordinator_ports)
        for spec in self.participant_specs():
            name = spec.name
            port = free_port()
            cluster = self.participant_cluster(name)
            dsn = cluster.dsn(self.participant_db(spec))
            service_dsn, url = dsn, f"http://127.0.0.1:{port}"
            if self.config.fault_proxies:
                assert isinstance(cluster, Cluster)
                db_proxy = FaultProxy(cluster.port, free_port(), http=False)
                self.db_proxies[name] = db_proxy
                service_dsn = dsn.replace(f":{cluster.port}/", f":{db_proxy.port}/")
                proxy = FaultProxy(port, free_port(), http=True)
                self.proxies[name] = proxy
                url = f"http://127.0.0.1:{proxy.port}"
            self.services[name] = Service(
                name=name,
                kind="participant",
                argv=[sys.executable, "-m", spec.module],
                env={
                    "TXNP_NAME": name,
                    "TXNP_DSN": service_dsn,
                    "TXNP_PORT": str(port),
                    "TXNP_COORDINATORS": coordinator_urls,
                    "TXNP_SECRET": self.participant_secrets.setdefault(
                        name, secrets.token_urlsafe(32)
                    ),
                    "TXNP_API_TOKENS": tokens,
                    # The orders service submits orders to the coordinator with it.
                    "TXNP_COORDINATOR_TOKEN": self.api_token,
                    **self.config.participant_env,
                },
                port=port,
                log_file=logs / f"{name}.log",
                dsn=dsn,
            )
            registry[name] = url
        registry.update(self.config.extra_registry)
        for i, port in enumerate(coordinator_ports, start=1):
            name = f"coord{i}"
            self.services[name] = Service(
                name=name,
                kind="coordinator",
                # `txn serve`, as compose runs it.
                argv=[sys.executable, "-m", "coordinator.cli", "serve"],
                env={
                    "TXN_LOG_DSN": self.log_dsn,
                    "TXN_PARTICIPANTS": json.dumps(registry),
                    "TXN_PARTICIPANT_SECRETS": json.dumps(
                        {**self.participant_secrets, **self.config.extra_secrets}
                    ),
                    "TXN_API_TOKENS": json.dumps([*json.loads(tokens), *self.config.extra_tokens]),
                    # The dev stack's OpenAPI page loads in a browser without a token.
                    "TXN_OPEN_DOCS": "true",
                    "TXN_INSTANCE_ID": name,
                    "TXN_PORT": str(port),
                    **self.config.coordinator_env,
                },
                port=port,
                log_file=logs / f"{name}.log",
            )
        # Participants first: a coordinator may start recovering at once.
        for service in self.services.values():
            service.start()

    @property
    def coordinators(self) -> list[Service]:
        return [s for s in self.services.values() if s.kind == "coordinator"]

    @property
    def participants(self) -> list[Service]:
        return [s for s in self.services.values() if s.kind == "participant"]

    @property
    def coordinator_url(self) -> str:
        return self.coordinators[0].url

    def service(self, name: str) -> Service:
        return self.services[name]

    def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        """Stop a service (if running) and start it again, optionally with changed settings."""
        with self._lock:
            service = self.services[name]
            service.stop()
            if env is not None:
                service.env.update(env)
            service.start()
            self.write_state()

    # -- supervision ---------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            self._note_ha_roles()
            with self._lock:
                for service in self.services.values():
                    code = service.exited()
                    if code is None or not service.restart or self._stopping.is_set():
                        continue
                    service.exits.append(code)
                    service.restarts += 1
                    log.warning("service %s exited with %s; restarting", service.name, code)
                    try:
                        service.start()
                    except (RuntimeError, TimeoutError) as e:
                        log.error("restart of %s failed: %s", service.name, e)
                        service.stop()  # leaves proc None; retried on a later tick
                        service.proc = None
                    self.write_state()

    def _note_ha_roles(self) -> None:
        """Keep stack.json's node roles current (checked once a second)."""
        if not self.ha or time.monotonic() - self._ha_polled < 1.0:
            return
        self._ha_polled = time.monotonic()
        roles = {name: group.roles() for name, group in self.ha.items()}
        if roles != self._ha_roles:
            self._ha_roles = roles
            with self._lock:
                if not self._stopping.is_set():
                    self.write_state()

    def wait_restarted(self, name: str, restarts: int, timeout_s: float = 30.0) -> None:
        """Block until service ``name`` has been restarted ``restarts`` times and is healthy."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                service = self.services[name]
                if service.restarts >= restarts and service.pid is not None:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{name} was not restarted {restarts} time(s) in {timeout_s}s")

    # -- stack.json ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "coordinators": [
                {"name": s.name, "url": s.url, "pid": s.pid} for s in self.coordinators
            ],
            "participants": [
                {"name": s.name, "url": s.url, "pid": s.pid, "dsn": s.dsn}
                for s in self.participants
            ],
            "log_dsn": self.log_dsn,
            # An admin token of this run's services (Authorization: Bearer <api_token>).
            "api_token": self.api_token,
            "clusters": [
                {
                    "name": c.name,
                    "port": c.port,
                    "pid": c.pid,
                    "data_dir": str(c.data_dir),
                    "max_connections": c.max_connections,
                }
                for c in self.clusters.values()
            ],
            **({"log_nodes": self.ha["log"].state()} if "log" in self.ha else {}),
            **(
                {"participant_nodes": {n: g.state() for n, g in self.ha.items() if n != "log"}}
                if set(self.ha) - {"log"}
                else {}
            ),
            **self.extra_state,
        }

    def write_state(self) -> None:
        path = self.state_dir / "stack.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(tmp, path)


def auth_headers(token: str) -> dict[str, str]:
    """The header every request to the stack's APIs carries."""
    return {"Authorization": f"Bearer {token}"}


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it will not go."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def run_in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking function that may call ``asyncio.run`` (Alembic's async env) off the
    caller's thread, so it works under a running event loop too."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
