"""Where the local stack lives and which ports it uses.

The first ``stack up`` writes ``stack.json`` in the stack directory; later commands read it, so ``status``,
``env`` and ``down`` talk about the stack that was actually started even if the environment changed since.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cqox_platform.errors import StackDirError
from cqox_platform.settings import get_settings

#: Default ports, chosen away from the well-known ones so a developer's own PostgreSQL or Prometheus can run.
DEFAULT_PORTS: dict[str, int] = {
    "postgres": 55432,
    "openbao": 58200,
    "openbao_cluster": 58201,
    "s3": 59000,
    "prometheus": 59090,
    "pushgateway": 59091,
    "dagster": 3000,
    "traffic": 59100,
    "kine": 52379,
    "kube_apiserver": 56443,
    "kube_controller_manager": 50257,
    # High availability (`stack up --ha`): etcd, three Patroni nodes (PostgreSQL and REST API), HAProxy.
    "etcd": 52390,
    "etcd_peer": 52391,
    "patroni1": 58441,
    "patroni2": 58442,
    "patroni3": 58443,
    "pg1": 55441,
    "pg2": 55442,
    "pg3": 55443,
    "postgres_replicas": 55439,
    "haproxy_stats": 58404,
    # Alerting: Alertmanager and the local receiver (PagerDuty Events v2 and webhooks). Appended last so
    # `--port-base` keeps every older service's offset.
    "alertmanager": 59093,
    "alert_receiver": 59094,
    # Exporters (appended last for the same reason): PostgreSQL's, one per node (only the first on a single
    # node), the blackbox prober (certificate expiry, OpenBao's seal), and etcd's metrics-only listener.
    "postgres_exporter1": 59187,
    "postgres_exporter2": 59188,
    "postgres_exporter3": 59189,
    "blackbox_exporter": 59115,
    "etcd_metrics": 52392,
    # The optional Kubernetes node (`stack up --kube-node`): kubelet's API and health port, kube-scheduler.
    "kubelet": 50250,
    "kubelet_healthz": 50248,
    "kube_scheduler": 50259,
    # The DR region's S3 server (appended last, like the others, so `--port-base` keeps every older offset).
    "s3_dr": 59002,
}

DB_NAME = "cqox_prod"
DAGSTER_DB_NAME = "dagster"
DB_ADMIN_USER = "cqox_admin"
BACKUP_BUCKET = "cqox-backups"
DR_BUCKET = "cqox-backups-dr"


@dataclass
class StackConfig:
    """The stack directory and the ports of its services."""

    root: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    with_dagster: bool = True
    #: The daemon runs schedules and sensors; tests turn it off so no sensor races the test's own runs.
    with_daemon: bool = True
    #: The synthetic traffic exporter (``stack up --traffic``).
    with_traffic: bool = False
    #: Three Patroni-managed nodes behind HAProxy instead of one PostgreSQL (``stack up --ha``).
    ha: bool = False
    #: Patroni's synchronous mode (``--ha --sync``): a commit waits for one standby, so failover loses nothing.
    ha_sync: bool = False
    #: A single Kubernetes node (containerd, kubelet, kube-scheduler) that runs pods (``stack up --kube-node``).
    with_kube_node: bool = False

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def tls_dir(self) -> Path:
        return self.path("tls")

    @property
    def secrets_dir(self) -> Path:
        return self.path("secrets")

    @property
    def logs_dir(self) -> Path:
        return self.path("logs")

    @property
    def run_dir(self) -> Path:
        return self.path("run")

    def save(self) -> None:
        data = asdict(self)
        data["root"] = str(self.root)
        self.state_file.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        root: Path | None = None,
        *,
        port_base: int | None = None,
        with_dagster: bool | None = None,
        with_traffic: bool | None = None,
        ha: bool | None = None,
        ha_sync: bool | None = None,
        with_kube_node: bool | None = None,
    ) -> StackConfig:
        """Read ``stack.json`` when the stack exists; otherwise build the config from flags and environment."""
        settings = get_settings()
        root = (root or settings.stack_dir).absolute()
        state = root / "stack.json"
        if state.exists():
            data = json.loads(state.read_text())
            config = cls(
                root=root,
                ports={**DEFAULT_PORTS, **data.get("ports", {})},
                with_dagster=data.get("with_dagster", True),
                with_daemon=data.get("with_daemon", True),
                with_traffic=data.get("with_traffic", False),
                ha=data.get("ha", False),
                ha_sync=data.get("ha_sync", False),
                with_kube_node=data.get("with_kube_node", False),
            )
            if ha and not config.ha:
                raise StackDirError(
                    f"the stack in {root} was created as a single PostgreSQL node; `--ha` needs a new stack: "
                    f"`cqox-platform stack down`, then remove {root} or choose another directory with --dir."
                )
            if with_dagster is not None:
                config.with_dagster = with_dagster
            if with_traffic:
                config.with_traffic = True
            if with_kube_node:
                config.with_kube_node = True
            return config
        ports = dict(DEFAULT_PORTS)
        if port_base is not None:
            ports = {name: port_base + i for i, name in enumerate(DEFAULT_PORTS)}
        ports.update(settings.port_overrides())
        return cls(
            root=root,
            ports=ports,
            with_dagster=True if with_dagster is None else with_dagster,
            with_traffic=bool(with_traffic),
            ha=bool(ha),
            ha_sync=bool(ha_sync),
            with_kube_node=bool(with_kube_node),
        )
