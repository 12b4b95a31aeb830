"""Exporters of the local stack: what lets Prometheus see PostgreSQL, certificates and OpenBao's seal.

**PostgreSQL** (Debian ``prometheus-postgres-exporter``), one per node: the single node, or each Patroni node on
its own port (a replica's lag and a leader's archiver are per node, and HAProxy would only ever show the
leader). It logs in as ``cqox_monitor``, a role with ``pg_monitor`` and nothing else, over verified TLS
(``sslmode=verify-full`` against the stack CA). The password is generated into ``secrets/`` and handed to the
exporter as ``DATA_SOURCE_PASS_FILE``: never on its command line, in its environment or in a log. Besides the
built-in collectors (``pg_stat_archiver``, ``pg_stat_replication``, ``pg_stat_activity``, database sizes) it runs
the queries of ``QUERIES``: whether the archiver's last attempt failed, and a replica's replay lag.

**Blackbox** (Debian ``prometheus-blackbox-exporter``) probes the stack's TLS endpoints for
``probe_ssl_earliest_cert_expiry`` (the whole chain, CA included) and OpenBao's ``/v1/sys/health``, whose
status code says sealed (503) apart from down (no answer).

Both serve their own metrics over TLS 1.3 with the stack's server certificate (``--web.config.file``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import requests

from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import DB_NAME, StackConfig
from cqox_platform.stack.postgres import PostgresService, scram_sha256_verifier
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

MONITOR_ROLE = "cqox_monitor"

#: Extra queries (``--extend.query-path``); each metric is ``<query name>_<column>``.
QUERIES = """# Written by cqox-platform stack; changes are overwritten on `stack up`.
cqox_archiver:
  # 1 while the archiver's latest attempt failed (no success since): pg_stat_archiver's counters alone cannot
  # tell an old failure from a current one.
  query: >-
    SELECT (COALESCE(last_failed_time > COALESCE(last_archived_time, 'epoch'), false))::int AS failing,
           COALESCE(EXTRACT(EPOCH FROM last_failed_time), 0) AS last_failed_time_seconds
      FROM pg_stat_archiver
  metrics:
    - failing:
        usage: GAUGE
        description: "1 if the WAL archiver's last attempt failed and nothing was archived since"
    - last_failed_time_seconds:
        usage: GAUGE
        description: "Unix time of the archiver's last failure (0: never)"
cqox_replica:
  # How far replay is behind what this node received: a replica whose startup process is stuck keeps
  # receiving (the walreceiver runs) while replay stands still.
  query: >-
    SELECT pg_is_in_recovery()::int AS in_recovery,
           CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
                THEN COALESCE(GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())), 0)
                ELSE 0 END AS replay_lag_seconds,
           COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0) AS replay_lag_bytes
  metrics:
    - in_recovery:
        usage: GAUGE
        description: "1 on a replica (in recovery), 0 on a primary"
    - replay_lag_seconds:
        usage: GAUGE
        description: "Seconds since the last replayed commit while received WAL waits for replay (0: caught up)"
    - replay_lag_bytes:
        usage: GAUGE
        description: "Received but not yet replayed WAL, in bytes"
"""


def monitor_password_file(stack: StackConfig) -> Path:
    return stack.secrets_dir / "postgres-monitor-password"


def ensure_monitor_role(stack: StackConfig) -> None:
    """``cqox_monitor``: LOGIN, ``pg_monitor`` only, a SCRAM verifier of the generated password (idempotent).

    Done as ``cqox_admin`` through the stack's PostgreSQL endpoint (the leader on an HA stack; replicas get the
    role by replication), with pgAudit's role logging off for the statement so not even the verifier is logged.
    """
    path = monitor_password_file(stack)
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    verifier = scram_sha256_verifier(path.read_text().strip())
    with psycopg.connect(**PostgresService(stack).conninfo(), autocommit=True) as conn:
        conn.execute("SET pgaudit.log = 'none'")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {MONITOR_ROLE} LOGIN CONNECTION LIMIT 10")
        conn.execute(f"GRANT pg_monitor TO {MONITOR_ROLE}")
        # ALTER ROLE takes no bind parameters; the verifier is base64 and '$', so quoting it is enough.
        conn.execute(f"ALTER ROLE {MONITOR_ROLE} PASSWORD '{verifier}'")


def write_web_config(stack: StackConfig, path: Path) -> None:
    """The exporter toolkit's web config: serve over TLS 1.3 with the stack's server certificate."""
    tls = tls_files(stack.tls_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(
        path,
        f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
tls_server_config:
  cert_file: {tls.server_cert}
  key_file: {tls.server_key}
  min_version: TLS13
""",
    )


def _get(url: str, stack: StackConfig, **kwargs) -> requests.Response:
    return requests.get(url, verify=str(tls_files(stack.tls_dir).ca_cert), timeout=5, **kwargs)


class PostgresExporterService(Service):
    """The exporter of one PostgreSQL node: ``postgres-exporter`` (single node) or ``postgres-exporter-nodeN``."""

    binaries = ("prometheus-postgres-exporter",)

    def __init__(self, stack: StackConfig, index: int = 1) -> None:
        super().__init__(stack)
        self.index = index
        self.name = f"postgres-exporter-node{index}" if stack.ha else "postgres-exporter"

    @property
    def pg_port(self) -> int:
        return self.stack.ports[f"pg{self.index}"] if self.stack.ha else self.stack.ports["postgres"]

    @property
    def port(self) -> int | None:
        return self.stack.ports.get(f"postgres_exporter{self.index}")

    @property
    def home(self) -> Path:
        return self.stack.path("exporters", self.name)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        text = _get(f"{self.url}/metrics", self.stack).text
        return any(line.startswith("pg_up") and line.split()[-1] == "1" for line in text.splitlines())

    def start(self) -> None:
        ensure_monitor_role(self.stack)
        queries = self.home / "queries.yaml"
        web_config = self.home / "web.yml"
        write_web_config(self.stack, web_config)
        write_private(queries, QUERIES)
        ca = tls_files(self.stack.tls_dir).ca_cert
        env = {
            "DATA_SOURCE_URI": f"127.0.0.1:{self.pg_port}/{DB_NAME}?sslmode=verify-full&sslrootcert={ca}"
            "&connect_timeout=5&application_name=cqox-postgres-exporter",
            "DATA_SOURCE_USER": MONITOR_ROLE,
            "DATA_SOURCE_PASS_FILE": str(monitor_password_file(self.stack)),
            "PATH": "/usr/bin:/bin",
        }
        pid = spawn(
            [
                find_binary("prometheus-postgres-exporter"),
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.config.file={web_config}",
                f"--extend.query-path={queries}",
                "--log.level=warn",
            ],
            log_path=self.log_path,
            env=env,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what=f"{self.name} (pg_up 1)",
            log_path=self.log_path,
            alive=self.running,
        )


#: Blackbox modules: a TLS handshake for certificate expiry, OpenBao's health with every code it answers valid
#: (sealed is then a status code, 503, not a failed probe; down is a failed probe).
BLACKBOX_MODULES = """modules:
  tls_expiry:
    prober: tcp
    timeout: 5s
    tcp:
      tls: true
      tls_config:
        ca_file: {ca}
        min_version: TLS13
  openbao_health:
    prober: http
    timeout: 5s
    http:
      method: GET
      valid_status_codes: [200, 429, 472, 473, 501, 503]
      fail_if_not_ssl: true
      tls_config:
        ca_file: {ca}
"""


class BlackboxExporterService(Service):
    name = "blackbox-exporter"
    binaries = ("prometheus-blackbox-exporter",)

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("blackbox_exporter")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return _get(f"{self.url}/-/healthy", self.stack).status_code == 200

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config, web_config = self.home / "blackbox.yml", self.home / "web.yml"
        write_web_config(self.stack, web_config)
        config.write_text(
            "# Written by cqox-platform stack; changes are overwritten on `stack up`.\n"
            + BLACKBOX_MODULES.format(ca=tls_files(self.stack.tls_dir).ca_cert)
        )
        pid = spawn(
            [
                find_binary("prometheus-blackbox-exporter"),
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.config.file={web_config}",
                "--log.level=warn",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="blackbox exporter",
            log_path=self.log_path,
            alive=self.running,
        )


def exporter_services(stack: StackConfig) -> list[Service]:
    """One PostgreSQL exporter per node, then the blackbox prober."""
    nodes = range(1, 4) if stack.ha else range(1, 2)
    return [*(PostgresExporterService(stack, i) for i in nodes), BlackboxExporterService(stack)]
