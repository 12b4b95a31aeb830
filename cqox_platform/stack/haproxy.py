"""HAProxy in front of the Patroni nodes: the one PostgreSQL endpoint every client of an HA stack uses.

Why HAProxy and not libpq's multi-host ``target_session_attrs=read-write``: every client of the platform keeps
one host and one port (psycopg 3 in the resources, Dagster's psycopg2 storage behind a SQLAlchemy URL, OpenBao's
database engine, pg_basebackup, psql, and anything a user points at CQOX), and routing follows Patroni's own
view of the leader through its REST health checks (``GET /primary`` over verified TLS) instead of each client
probing servers. ``on-marked-down shutdown-sessions`` closes connections to a demoted leader, so pools
reconnect to the new one instead of lingering on a read-only server. TLS is not terminated here: the TCP
stream passes through and clients still verify the node's certificate (``sslmode=verify-full``).

A second listener (``postgres_replicas``) routes to healthy replicas (``GET /replica``) for read-only work,
and a third serves HAProxy's Prometheus metrics.
"""

from __future__ import annotations

import pwd
from pathlib import Path

import psycopg
import requests

from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import DB_NAME, StackConfig
from cqox_platform.stack.patroni import PatroniClusterService
from cqox_platform.stack.postgres import PostgresService, client_env
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

#: Health-check cadence: a dead leader is out after 2 failed checks 0.5 s apart; a new one in after 1.
CHECK = "inter 1s fastinter 500ms downinter 1s fall 2 rise 1"


class HaproxyService(Service):
    """Named ``postgres`` because it is the PostgreSQL endpoint of the stack, on the single node's port."""

    name = "postgres"
    binaries = ("haproxy",)

    def __init__(self, stack: StackConfig, cluster: PatroniClusterService) -> None:
        super().__init__(stack)
        self.cluster = cluster
        self.base = PostgresService(stack)

    @property
    def url(self) -> str:
        return self.base.url

    @property
    def config_path(self) -> Path:
        return self.stack.path("haproxy", "haproxy.cfg")

    @property
    def log_path(self) -> Path:
        return self.stack.logs_dir / "haproxy.log"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports['haproxy_stats']}"

    def conninfo(self, dbname: str = DB_NAME) -> dict[str, str | int]:
        return self.base.conninfo(dbname)

    def healthy(self) -> bool:
        with psycopg.connect(**self.conninfo()) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)

    def write_config(self) -> None:
        ca = tls_files(self.stack.tls_dir).ca_cert
        check = f"check-ssl verify required ca-file {ca} verifyhost localhost"
        servers = "".join(
            f"  server {node.name} 127.0.0.1:{node.pg_port} check port {node.rest_port} {check}\n"
            for node in self.cluster.nodes
        )
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"""# Written by cqox-platform stack; changes are overwritten on `stack up`.
global
  log stdout format raw local0 notice
  maxconn 1000

defaults
  mode tcp
  log global
  option dontlognull
  timeout connect 4s
  timeout client 1h
  timeout server 1h
  timeout check 2s
  default-server {CHECK} on-marked-down shutdown-sessions

listen postgres_primary
  bind 127.0.0.1:{self.port}
  option httpchk
  http-check send meth GET uri /primary
  http-check expect status 200
{servers}
listen postgres_replicas
  bind 127.0.0.1:{self.stack.ports["postgres_replicas"]}
  balance roundrobin
  option httpchk
  http-check send meth GET uri /replica
  http-check expect status 200
{servers}
frontend stats
  mode http
  bind 127.0.0.1:{self.stack.ports["haproxy_stats"]}
  http-request use-service prometheus-exporter if {{ path /metrics }}
  stats enable
  stats uri /stats
"""
        )

    def start(self) -> None:
        self.write_config()
        haproxy = find_binary("haproxy")
        user = "haproxy" if _user_exists("haproxy") else None
        pid = spawn([haproxy, "-db", "-f", str(self.config_path)], log_path=self.log_path, user=user)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="HAProxy to the Patroni leader",
            log_path=self.log_path,
            alive=self.running,
        )

    def backends(self) -> dict[str, str]:
        """``listener/node`` -> ``UP``/``DOWN`` from HAProxy's own metrics (what ``stack status`` shows)."""
        text = requests.get(f"{self.stats_url}/stats;csv", timeout=2).text
        states = {}
        for line in text.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[1] not in ("FRONTEND", "BACKEND", "svname"):
                states[f"{fields[0]}/{fields[1]}"] = fields[17]
        return states

    def env(self) -> dict[str, str]:
        return {
            **client_env(self.stack, self.port, self.base.passfile),
            "CQOX_PG_REPLICAS_PORT": str(self.stack.ports["postgres_replicas"]),
            "CQOX_HAPROXY_STATS_URL": self.stats_url,
        }


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
