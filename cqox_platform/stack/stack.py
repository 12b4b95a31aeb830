"""The local stack as a whole: bring every service up in dependency order, report, print env, tear down."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from cqox_platform.alerts.drill.faults import UNDOERS
from cqox_platform.alerts.drill.journal import FaultJournal, journal_path, recover
from cqox_platform.settings import render_stack_env
from cqox_platform.stack.alerting import AlertmanagerService, AlertReceiverService
from cqox_platform.stack.archiver_bootstrap import configure_stack_archiver
from cqox_platform.stack.certs import ensure_tls
from cqox_platform.stack.config import StackConfig
from cqox_platform.stack.dagster_services import (
    DagsterDaemonService,
    DagsterWebserverService,
    dagster_home,
    prepare_dagster_home,
)
from cqox_platform.stack.etcd import EtcdService
from cqox_platform.stack.exporters import exporter_services
from cqox_platform.stack.haproxy import HaproxyService
from cqox_platform.stack.kube.node import node_services
from cqox_platform.stack.kube.services import KineService, KubeApiserverService, KubeControllerManagerService
from cqox_platform.stack.openbao import OpenBaoService
from cqox_platform.stack.patroni import PatroniClusterService
from cqox_platform.stack.postgres import PostgresService
from cqox_platform.stack.process import ensure_port_free, ensure_writable_dir, find_binary
from cqox_platform.stack.prometheus import PrometheusService, PushgatewayService
from cqox_platform.stack.s3 import S3DrService, S3Service
from cqox_platform.stack.service import Service, ServiceStatus
from cqox_platform.stack.traffic_service import TrafficService

Progress = Callable[[str], None]


class Stack:
    """Real services under one directory: PostgreSQL (one node, or a Patroni cluster behind HAProxy), OpenBao,
    S3 (the primary's and the DR region's), the alert receiver, Alertmanager, Prometheus, Pushgateway, the
    Kubernetes API (kine, kube-apiserver, kube-controller-manager; with ``with_kube_node`` also a node: containerd,
    kubelet, kube-scheduler), the exporters (PostgreSQL per node, blackbox), Dagster."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        apiserver = KubeApiserverService(config)
        # OpenBao and S3 before PostgreSQL: its archive_command needs both from the first segment on (and on
        # `down`, PostgreSQL stops first, archiving its last segments while they are still up).
        self.openbao, self.s3 = OpenBaoService(config), S3Service(config)
        #: The DR region's S3 server: its own port, data, CA and keys (the DR copy writes there).
        self.s3_dr = S3DrService(config)
        self.postgres_services = self._postgres_services(config)
        core: list[Service] = [
            self.openbao,
            self.s3,
            self.s3_dr,
            *self.postgres_services,
            AlertReceiverService(config),
            AlertmanagerService(config),
            # The Pushgateway before Prometheus: its scrape job names the Pushgateway's credentials.
            PushgatewayService(config),
            PrometheusService(config),
            KineService(config),
            apiserver,
            KubeControllerManagerService(config, apiserver),
            # `--kube-node`: containerd, kubelet and kube-scheduler, so pods run instead of staying Pending.
            *(node_services(config, apiserver) if config.with_kube_node else []),
            # After everything they watch: the PostgreSQL exporters create their login role on the way up.
            *exporter_services(config),
        ]
        if config.with_traffic:
            core.append(TrafficService(config))
        self.services: list[Service] = core
        if config.with_dagster:
            base_env = self._env_of(core)
            self.services = [*core, DagsterWebserverService(config, base_env)]
            if config.with_daemon:
                self.services.append(DagsterDaemonService(config, base_env))

    @staticmethod
    def _postgres_services(config: StackConfig) -> list[Service]:
        """One PostgreSQL, or (``--ha``) etcd, three Patroni nodes and HAProxy as the ``postgres`` endpoint."""
        if not config.ha:
            return [PostgresService(config)]
        cluster = PatroniClusterService(config)
        return [EtcdService(config), cluster, HaproxyService(config, cluster)]

    @classmethod
    def from_dir(cls, root: Path | None = None, **kwargs) -> Stack:
        return cls(StackConfig.load(root, **kwargs))

    @property
    def archiver_owner(self) -> PostgresService:
        """Whose archiver settings file PostgreSQL's archive_command reads (HA: shared by the three nodes)."""
        first = next(s for s in self.postgres_services if isinstance(s, PostgresService | PatroniClusterService))
        return first.base if isinstance(first, PatroniClusterService) else first

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def up(self, progress: Progress = lambda _msg: None) -> list[ServiceStatus]:
        """Start what is not running, provision everything, return the statuses. Running twice is a no-op."""
        ensure_writable_dir(self.config.root)
        for sub in (self.config.logs_dir, self.config.run_dir, self.config.secrets_dir):
            sub.mkdir(parents=True, exist_ok=True)
        self.config.secrets_dir.chmod(0o700)
        self.config.save()
        ensure_tls(self.config.tls_dir)
        # `stack env` exports DAGSTER_HOME even without the webserver, so CLI runs always have an instance.
        prepare_dagster_home(self.config.root)
        # Check every binary and port before starting anything, so a missing package fails fast and clean.
        pending = [s for s in self.services if not s.running()]
        for service in pending:
            for binary in service.binaries:
                find_binary(binary, service.binary_dirs)
            if service.port is not None:
                ensure_port_free(service.port, service.name)
        for service in self.services:
            if service is self.postgres_services[0]:
                for change in configure_stack_archiver(self.openbao, self.s3, self.archiver_owner):
                    progress(f"WAL archiver: {change}")
            if service in pending:
                progress(f"starting {service.name} on port {service.port} (log: {service.log_path})")
                service.start()
            else:
                progress(f"{service.name} already running (pid {service.read_pid()})")
            service.after_start()
        # Faults an alert drill injected and could not undo (killed mid-way) are undone now, services running.
        for line in recover(FaultJournal(journal_path(self.config.root)), UNDOERS):
            progress(f"alert drill journal: {line}")
        return self.status()

    def down(self, progress: Progress = lambda _msg: None) -> None:
        for service in reversed(self.services):
            if service.running():
                progress(f"stopping {service.name} (pid {service.read_pid()})")
            service.stop()

    def status(self) -> list[ServiceStatus]:
        return [s.status() for s in self.services]

    # --- environment ---------------------------------------------------------------------------------------

    def _env_of(self, services: list[Service]) -> dict[str, str]:
        env = {
            "CQOX_STACK_DIR": str(self.config.root),
            "DAGSTER_HOME": str(dagster_home(self.config.root)),
        }
        for service in services:
            env.update(service.env())
        return render_stack_env(env)

    def env(self) -> dict[str, str]:
        """What resources and clients read; paths to secrets, never secrets themselves."""
        return self._env_of(self.services)

    def env_script(self) -> str:
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(self.env().items()))
