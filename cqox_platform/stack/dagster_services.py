"""The Dagster instance of the local stack: webserver and daemon, storage on the stack's PostgreSQL.

``DAGSTER_HOME`` is ``<stack>/dagster``; the repository's ``dagster.yaml`` is copied there on every ``up`` so
the instance config is reviewed in git but the run history stays with the stack. The webserver and daemon
load the repository's ``workspace.yaml``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import requests

from cqox_platform.errors import StackError
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def dagster_home(stack_root: Path) -> Path:
    return stack_root / "dagster"


def prepare_dagster_home(stack_root: Path) -> Path:
    """Create DAGSTER_HOME with the repository's instance config."""
    home = dagster_home(stack_root)
    home.mkdir(parents=True, exist_ok=True)
    source = PROJECT_ROOT / "dagster.yaml"
    if not source.exists():
        raise StackError(f"{source} is missing; run the stack from a checkout installed with `pip install -e .`.")
    shutil.copyfile(source, home / "dagster.yaml")
    return home


class _DagsterProcess(Service):
    """Shared start logic: the process inherits the stack's environment so it reaches every service."""

    def __init__(self, stack, stack_env: dict[str, str]) -> None:
        super().__init__(stack)
        self.stack_env = stack_env

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        prepare_dagster_home(self.stack.root)
        env = {**os.environ, **self.stack_env}
        pid = spawn(self.argv(), log_path=self.log_path, env=env, cwd=PROJECT_ROOT)
        self.write_pid(pid)
        wait_until(self.healthy, timeout=self.start_timeout, what=self.name, log_path=self.log_path, alive=self.running)


class DagsterWebserverService(_DagsterProcess):
    name = "dagster"
    binaries = ("dagster-webserver",)
    start_timeout = 180.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            find_binary("dagster-webserver"),
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/server_info", timeout=3).status_code == 200

    def env(self) -> dict[str, str]:
        return {"CQOX_DAGSTER_URL": self.url}


class DagsterDaemonService(_DagsterProcess):
    """Runs schedules, sensors and the run queue. It has no port; its health is its heartbeat file's PID."""

    name = "dagster-daemon"
    binaries = ("dagster-daemon",)
    start_timeout = 60.0

    @property
    def url(self) -> str:
        return "-"

    def argv(self) -> list[str]:
        return [find_binary("dagster-daemon"), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")]

    def healthy(self) -> bool:
        return self.running()
