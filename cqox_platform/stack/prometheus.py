"""Prometheus and the Pushgateway of the local stack, each with its own config and data directory.

Prometheus runs without its lifecycle API (``POST /-/quit`` from any local process would stop every alert) and
without its admin API (delete series, snapshots: any local process could erase the evidence the canary and SLOs
read; history is backfilled with ``promtool tsdb create-blocks-from``). Generated rule files are loaded by SIGHUP
to the PID in its PID file (``CQOX_PROMETHEUS_PID_FILE``, ``cqox_platform.metrics.prometheus``), which only its
own OS user (or root) may send.

Every other service is scraped too, through its exporter or its own endpoint (``stack/scrape_targets.py``).

Alerts go to the stack's Alertmanager over TLS 1.3 with basic auth (``alerting:``; see ``stack/alerting.py``).

The Pushgateway serves over TLS 1.3 and answers only basic-auth users (``--web.config.file``, bcrypt hashes of
passwords generated into ``secrets/``): ``cqox-pusher``, whose password file the platform's pushers name
through ``CQOX_PUSHGATEWAY_USER`` and ``CQOX_PUSHGATEWAY_PASSWORD_FILE``, and ``prometheus``, which scrapes it.
Without them no local process can push ``cqox_restore_drill_success 1`` into the real group. What it serves is
still treated as untrusted (a pusher's credentials can leak): it is scraped with ``honor_labels: false`` (a
pushed ``job="cqox-traffic"`` becomes ``exported_job`` and cannot pose as a scraped target) and only the series
the platform pushes are kept (``PUSHED_METRICS``); a pushed ``http_requests_total{version="canary"}`` never
enters the TSDB, so it cannot dilute the canary's evidence.
Nothing queries the gauges by ``job``: alerts select them by name and ``system_id``/``service``/``slo`` labels.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import bcrypt
import requests

from cqox_platform.fsutil import write_private
from cqox_platform.stack.alerting import ALERTMANAGER_USER, AlertmanagerService
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.scrape_targets import scrape_configs_yaml
from cqox_platform.stack.service import Service

SCRAPE_INTERVAL = "15s"
#: How often Prometheus resends a firing alert; Alertmanager keeps it for 4 x this after the last send, so a dead
#: Prometheus's alerts (the Watchdog's among them) end a minute after it died here, not Prometheus's default 4 minutes.
RESEND_DELAY = "15s"
#: What the platform pushes (backup gauges, SLO gauges) and the Pushgateway's own bookkeeping: an allow-list,
#: so a new name someone pushes is dropped rather than trusted.
PUSHED_METRICS = "cqox_.+|slo_.+|push_time_seconds|push_failure_time_seconds"
#: The Pushgateway's users: the platform's pushers, and Prometheus, which scrapes it.
PUSHER_USER = "cqox-pusher"
SCRAPER_USER = "prometheus"


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
        gateway = PushgatewayService(self.stack)
        gateway.ensure_passwords()
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
    scheme: https
    tls_config:
      ca_file: {tls.ca_cert}
      min_version: TLS13
    basic_auth:
      username: {SCRAPER_USER}
      password_file: {gateway.password_file(SCRAPER_USER)}
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
                "--storage.tsdb.retention.time=400d",
                f"--rules.alert.resend-delay={RESEND_DELAY}",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="Prometheus", log_path=self.log_path, alive=self.running
        )

    def env(self) -> dict[str, str]:
        return {
            "CQOX_PROMETHEUS_URL": self.url,
            "CQOX_PROMETHEUS_RULES_DIR": str(self.rules_dir),
            "CQOX_PROMETHEUS_PID_FILE": str(self.pid_file),
        }


class PushgatewayService(Service):
    name = "pushgateway"
    binaries = ("prometheus-pushgateway",)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def web_config_path(self) -> Path:
        return self.home / "web.yml"

    @property
    def ca_cert(self) -> str:
        return str(tls_files(self.stack.tls_dir).ca_cert)

    def password_file(self, user: str) -> Path:
        return self.stack.secrets_dir / f"pushgateway-{user}-password"

    def ensure_passwords(self) -> None:
        """Generate each user's password once (0600 in ``secrets/``); later calls keep them."""
        self.stack.secrets_dir.mkdir(parents=True, exist_ok=True)
        for user in (PUSHER_USER, SCRAPER_USER):
            if not self.password_file(user).exists():
                write_private(self.password_file(user), secrets.token_urlsafe(24))

    def auth(self, user: str = SCRAPER_USER) -> tuple[str, str]:
        return user, self.password_file(user).read_text().strip()

    def healthy(self) -> bool:
        answer = requests.get(f"{self.url}/-/ready", auth=self.auth(), verify=self.ca_cert, timeout=2)
        return answer.status_code == 200

    def write_config(self) -> None:
        """TLS 1.3 with the stack's server certificate, and the users' bcrypt hashes (never the passwords)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.ensure_passwords()
        tls = tls_files(self.stack.tls_dir)
        users = "".join(
            f"  {user}: {bcrypt.hashpw(self.auth(user)[1].encode(), bcrypt.gensalt(rounds=10)).decode()}\n"
            for user in (PUSHER_USER, SCRAPER_USER)
        )
        write_private(
            self.web_config_path,
            f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
tls_server_config:
  cert_file: {tls.server_cert}
  key_file: {tls.server_key}
  min_version: TLS13
basic_auth_users:
{users}""",
        )

    def start(self) -> None:
        self.write_config()
        pid = spawn(
            [
                find_binary("prometheus-pushgateway"),
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.config.file={self.web_config_path}",
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
        return {
            "CQOX_PUSHGATEWAY_URL": self.url,
            "CQOX_PUSHGATEWAY_USER": PUSHER_USER,
            "CQOX_PUSHGATEWAY_PASSWORD_FILE": str(self.password_file(PUSHER_USER)),
            "CQOX_PUSHGATEWAY_CACERT": self.ca_cert,
        }
