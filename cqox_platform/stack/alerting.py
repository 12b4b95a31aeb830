"""Alertmanager and the local alert receiver of the stack.

**Alertmanager** (Debian ``prometheus-alertmanager``) serves its API over TLS 1.3 with the stack's server
certificate and basic auth (``--web.config.file``; the password is generated into ``secrets/`` and only its
bcrypt hash is in the web config). Its data directory (silences, notification log) stays across restarts, and
so does its routing file: ``stack up`` writes a first one only when none exists, routing everything to the
receiver's ``unrouted`` webhook; the ``alertmanager_config`` asset replaces it with the routing rendered from
the repository and reloads. Clustering is off (``--cluster.listen-address=``): one instance, no gossip port.

**The receiver** (``cqox_platform.stack.alert_receiver``) stands in for PagerDuty, the ticket webhook and the
dead-man's-snitch service the Watchdog's heartbeat goes to (``/heartbeat/watchdog``, paging by itself after the
routing's ``heartbeat.expect_within`` of silence). Its integration key is generated into
``secrets/pagerduty-routing-key``; ``vault_config`` stores it in Vault KV, where ``alertmanager_config`` reads it
like it would read a real PagerDuty integration key.
"""

from __future__ import annotations

import secrets
import sys

import bcrypt
import requests

from cqox_platform.alerts.routing import load_spec
from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

ALERTMANAGER_USER = "cqox"


def heartbeat_allowance() -> float:
    """Seconds of Watchdog silence after which the stand-in snitch pages: the shipped routing's expect_within."""
    return load_spec().heartbeat.expect_within_seconds


class AlertReceiverService(Service):
    name = "alert-receiver"

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("alert_receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_path(self):
        return self.home / "received.jsonl"

    @property
    def routing_key_file(self):
        return self.stack.secrets_dir / "pagerduty-routing-key"

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.routing_key_file.exists():
            write_private(self.routing_key_file, secrets.token_hex(16))  # 32 characters, like PagerDuty's keys
        pid = spawn(
            [
                sys.executable,
                "-m",
                "cqox_platform.stack.alert_receiver",
                str(self.port),
                str(self.store_path),
                str(self.routing_key_file),
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="alert receiver", log_path=self.log_path, alive=self.running
        )

    def env(self) -> dict[str, str]:
        return {
            "CQOX_ALERT_RECEIVER_URL": self.url,
            "CQOX_PAGERDUTY_EVENTS_URL": f"{self.url}/v2/enqueue",
            "CQOX_ALERT_WEBHOOK_URL": f"{self.url}/webhook/tickets",
            # The stand-in snitch learns its allowance from the URL; a real one has it configured on its side.
            "CQOX_ALERT_HEARTBEAT_URL": f"{self.url}/heartbeat/watchdog?within={heartbeat_allowance():g}",
            "CQOX_PAGERDUTY_ROUTING_KEY_FILE": str(self.routing_key_file),
        }


class AlertmanagerService(Service):
    name = "alertmanager"
    binaries = ("prometheus-alertmanager", "amtool")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def config_path(self):
        return self.home / "alertmanager.yml"

    @property
    def web_config_path(self):
        return self.home / "web.yml"

    @property
    def password_file(self):
        return self.stack.secrets_dir / "alertmanager-password"

    @property
    def ca_cert(self) -> str:
        return str(tls_files(self.stack.tls_dir).ca_cert)

    def auth(self) -> tuple[str, str]:
        return ALERTMANAGER_USER, self.password_file.read_text().strip()

    def healthy(self) -> bool:
        response = requests.get(f"{self.url}/-/ready", auth=self.auth(), verify=self.ca_cert, timeout=3)
        return response.status_code == 200

    def write_config(self) -> None:
        tls = tls_files(self.stack.tls_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            write_private(self.password_file, secrets.token_urlsafe(24))
        hashed = bcrypt.hashpw(self.password_file.read_text().strip().encode(), bcrypt.gensalt(rounds=10)).decode()
        write_private(
            self.web_config_path,
            f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
tls_server_config:
  cert_file: {tls.server_cert}
  key_file: {tls.server_key}
  min_version: TLS13
basic_auth_users:
  {ALERTMANAGER_USER}: {hashed}
""",
        )
        if not self.config_path.exists():
            receiver = self.stack.ports["alert_receiver"]
            write_private(
                self.config_path,
                f"""# Written by cqox-platform stack until the alertmanager_config asset renders the real routing.
route:
  receiver: unrouted
receivers:
  - name: unrouted
    webhook_configs:
      - url: http://127.0.0.1:{receiver}/webhook/unrouted
""",
            )

    def start(self) -> None:
        self.write_config()
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        pid = spawn(
            [
                find_binary("prometheus-alertmanager"),
                f"--config.file={self.config_path}",
                f"--storage.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.config.file={self.web_config_path}",
                f"--web.external-url={self.url}",
                "--cluster.listen-address=",
                "--data.retention=120h",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy, timeout=self.start_timeout, what="Alertmanager", log_path=self.log_path, alive=self.running
        )

    def env(self) -> dict[str, str]:
        return {
            "CQOX_ALERTMANAGER_URL": self.url,
            "CQOX_ALERTMANAGER_CACERT": self.ca_cert,
            "CQOX_ALERTMANAGER_USER": ALERTMANAGER_USER,
            "CQOX_ALERTMANAGER_PASSWORD_FILE": str(self.password_file),
            "CQOX_ALERTMANAGER_CONFIG_FILE": str(self.config_path),
        }
