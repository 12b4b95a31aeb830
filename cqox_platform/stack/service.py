"""The shape every local-stack service shares: start once, report health, stop by PID."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.stack.config import StackConfig
from cqox_platform.stack.process import pid_alive, stop_pid


@dataclass(frozen=True)
class ServiceStatus:
    """What ``stack status`` prints for one service."""

    name: str
    state: str  # "running", "unhealthy", "stopped"
    port: int | None
    pid: int | None
    url: str
    log: Path


class Service(ABC):
    """One background process of the stack, owning a directory, a port, a PID file and a log file."""

    name: str = "service"
    #: Programs that must exist before ``start``; each is looked up with its package hint.
    binaries: tuple[str, ...] = ()
    start_timeout: float = 60.0

    def __init__(self, stack: StackConfig) -> None:
        self.stack = stack

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        """Directories searched for ``binaries`` before PATH (a build cache of the service's own binaries)."""
        return ()

    @property
    def port(self) -> int | None:
        return self.stack.ports.get(self.name)

    @property
    def home(self) -> Path:
        return self.stack.path(self.name)

    @property
    def pid_file(self) -> Path:
        return self.stack.run_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.stack.logs_dir / f"{self.name}.log"

    @property
    @abstractmethod
    def url(self) -> str:
        """How a client reaches the service."""

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def write_pid(self, pid: int) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")

    def running(self) -> bool:
        return pid_alive(self.read_pid())

    @abstractmethod
    def healthy(self) -> bool:
        """A real request against the service (not merely a live PID)."""

    @abstractmethod
    def start(self) -> None:
        """Start the process and return once ``healthy()``; never called while running."""

    def after_start(self) -> None:  # noqa: B027 - optional hook
        """Idempotent provisioning run after every ``up`` (buckets, roles, unseal...)."""

    def stop(self) -> None:
        pid = self.read_pid()
        if pid is not None:
            stop_pid(pid)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def env(self) -> dict[str, str]:
        """Environment variables a client of this service reads (no secrets, only paths to them)."""
        return {}

    def status(self) -> ServiceStatus:
        pid = self.read_pid()
        if not pid_alive(pid):
            state, pid = "stopped", None
        else:
            try:
                state = "running" if self.healthy() else "unhealthy"
            except Exception:
                state = "unhealthy"
        return ServiceStatus(self.name, state, self.port, pid, self.url, self.log_path)
