"""Service subprocesses with a restart policy, like a container runtime's ``restart: always``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Service:
    """One HTTP service process: ``argv`` run with ``env`` (added to ours), healthy when
    ``GET {url}/healthz`` answers 200."""

    name: str
    kind: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_file: Path
    dsn: str | None = None
    restart: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # The process ``begin_stop`` sent SIGTERM to: ``stop`` only waits for it.
    terminating: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout_s: float = 30.0) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"service {self.name} exited at start; see {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(
            f"service {self.name} not healthy after {timeout_s}s; see {self.log_file}"
        )

    def exited(self) -> int | None:
        """The exit code if the process ended (and is not yet restarted), else None."""
        if self.proc is None:
            return None
        return self.proc.poll()

    def begin_stop(self) -> None:
        """SIGTERM without waiting (``stop`` then waits, and does not send it again)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.terminating = self.proc

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process we started, by PID; SIGKILL if it will not go."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self.terminating is not proc:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("service %s ignored SIGTERM; killing pid %s", self.name, proc.pid)
                proc.kill()
                proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
