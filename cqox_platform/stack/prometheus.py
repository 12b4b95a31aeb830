"""Prometheus and the Pushgateway of the local stack, each with its own config and data directory.

Prometheus runs with the lifecycle API on so generated rule files can be loaded with a reload; its admin API
(delete series, snapshots) stays off: nothing here needs it (history is backfilled with ``promtool tsdb
create-blocks-from``) and any local process could otherwise erase the evidence the canary and SLOs read.

Every other service is scraped too, through its exporter or its own endpoint (``stack/scrape_targets.py``).

Alerts go to the stack's Alertmanager over TLS 1.3 with basic auth (``alerting:``; see ``stack/alerting.py``).

The Pushgateway accepts pushes from any local process, so what it serves is treated as untrusted: it is scraped
with ``honor_labels: false`` (a pushed ``job="cqox-traffic"`` becomes ``exported_job`` and cannot pose as a
scraped target) and only the series the platform pushes are kept (``PUSHED_METRICS``); a pushed
``http_requests_total{version="canary"}`` never enters the TSDB, so it cannot dilute the canary's evidence.
Nothing queries the gauges by ``job``: alerts select them by name and ``system_id``/``service``/``slo`` labels.
"""

from __future__ import annotations

import requests

from cqox_platform.stack.alerting import ALERTMANAGER_USER, AlertmanagerService
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.scrape_targets import scrape_configs_yaml
from cqox_platform.stack.service import Service

SCRAPE_INTERVAL = "15s"
#: What the platform pushes (backup gauges, SLO gauges) and the Pushgateway's own bookkeeping: an allow-list,
#: so a new name someone pushes is dropped rather than trusted.
PUSHED_METRICS = "cqox_.+|slo_.+|push_time_seconds|push_failure_time_seconds"


class PrometheusService(Service):
    name = "prometheus"
    binaries = ("prometheus", "promtool")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self):
        return self.home / "prometheus.yml"

    @property
    def rules_dir(self):
        return self.home / "rules"

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def write_config(self) -> None:
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        pushgateway_port = self.stack.ports["pushgateway"]
        alertmanager = self.stack.ports["alertmanager"]
        tls = tls_files(self.stack.tls_dir)
        password_file = AlertmanagerService(self.stack).password_file
        services = scrape_configs_yaml(
            self.stack, alertmanager_user=ALERTMANAGER_USER, alertmanager_password_file=password_file
        )
        self.config_path.write_text(
            f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
rule_files:
  - {self.rules_dir}/*.yml
alerting:
  alertmanagers:
    - scheme: https
      tls_config:
        ca_file: {tls.ca_cert}
        min_version: TLS13
      basic_auth:
        username: {ALERTMANAGER_USER}
        password_file: {password_file}
      static_configs:
        - targets: ["127.0.0.1:{alertmanager}"]
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{self.port}"]
  - job_name: pushgateway
    honor_labels: false
    static_configs:
      - targets: ["127.0.0.1:{pushgateway_port}"]
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "{PUSHED_METRICS}"
        action: keep
  - job_name: cqox-traffic
    file_sd_configs:
      - files: ["{self.home}/targets/*.json"]
{services}"""
        )
        (self.home / "targets").mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.write_config()
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        pid = spawn(
            [
                find_binary("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=400d",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="Prometheus", log_path=self.log_path, alive=self.running
        )

    def env(self) -> dict[str, str]:
        return {"CQOX_PROMETHEUS_URL": self.url, "CQOX_PROMETHEUS_RULES_DIR": str(self.rules_dir)}


class PushgatewayService(Service):
    name = "pushgateway"
    binaries = ("prometheus-pushgateway",)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        pid = spawn(
            [
                find_binary("prometheus-pushgateway"),
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--persistence.file={self.home / 'metrics.store'}",
                "--persistence.interval=30s",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="Pushgateway", log_path=self.log_path, alive=self.running
        )

    def env(self) -> dict[str, str]:
        return {"CQOX_PUSHGATEWAY_URL": self.url}
