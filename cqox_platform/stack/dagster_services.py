"""The Dagster instance of the local stack: webserver and daemon, storage on the stack's PostgreSQL.

``DAGSTER_HOME`` is ``<stack>/dagster``. On every ``up`` the instance config (the repository's ``dagster.yaml``,
shipped in a wheel as ``stack/dagster.yaml``, so an installed package starts the stack as well as a checkout;
``package_data.instance_config``) is copied there, so the instance config is reviewed in
git but the run history stays with the stack; next to it the stack writes the workspace that loads
``cqox_platform.definitions``, the same one as the repository's ``workspace.yaml`` (a unit test holds them equal).
The webserver and daemon run in ``DAGSTER_HOME``, so no ``dagster.yaml`` of a working directory is picked up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import requests
import yaml

from cqox_platform.package_data import instance_config
from cqox_platform.settings import child_env
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

INSTANCE_CONFIG = instance_config()
WORKSPACE = {
    "load_from": [{"python_module": {"module_name": "cqox_platform.definitions", "location_name": "cqox_platform"}}]
}


def dagster_home(stack_root: Path) -> Path:
    return stack_root / "dagster"


def prepare_dagster_home(stack_root: Path) -> Path:
    """Create DAGSTER_HOME with the instance config and the workspace of the code location."""
    home = dagster_home(stack_root)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    (home / "workspace.yaml").write_text(yaml.safe_dump(WORKSPACE, sort_keys=False))
    return home


def workspace_file(stack_root: Path) -> Path:
    return dagster_home(stack_root) / "workspace.yaml"


class _DagsterProcess(Service):
    """Shared start logic: the process inherits the stack's environment so it reaches every service."""

    def __init__(self, stack, stack_env: dict[str, str]) -> None:
        super().__init__(stack)
        self.stack_env = stack_env

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        env = child_env(self.stack_env)
        home = prepare_dagster_home(self.stack.root)
        pid = spawn(self.argv(), log_path=self.log_path, env=env, cwd=home)
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
            str(workspace_file(self.stack.root)),
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
        return [find_binary("dagster-daemon"), "run", "-w", str(workspace_file(self.stack.root))]

    def healthy(self) -> bool:
        return self.running()
