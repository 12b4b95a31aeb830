"""Three PostgreSQL 15 nodes managed by Patroni, scope ``cqox-cluster``, for ``stack up --ha``.

Patroni comes from this installation's virtualenv (a pinned dependency), not from Debian: Debian 12's 3.0.2
updates the etcd3 leader key without compare-and-swap, and the partition drill showed what that means (an old
leader, cut off from etcd and healed, took the key back from the leader elected in its absence).

Every node runs the single node's server settings (TLS 1.3, SCRAM, pgAudit, the same ``archive_command`` with
the node's own pusher spool; with ``archive_mode = on`` only the leader archives) and restores from the same
archive with ``wal-fetch``. The three are started together and waited for together: starting one alone after a full stop
would let a lagging node take the leader key before the others are back.

Timing: ``loop_wait`` 2 s, ``retry_timeout`` 4 s and ``ttl`` 20 s (Patroni's minimum; it requires loop_wait +
2 x retry_timeout <= ttl). ``primary_start_timeout`` 0 makes a crashed leader hand over to a healthy replica
instead of restarting PostgreSQL in place, which is what the roadmap's failover means. The secrets Patroni
needs (superuser, replication and REST passwords) are generated into the stack's ``secrets/`` and written only
into each node's ``patroni.yml`` (mode 0600, owned by the postgres OS user).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.fsutil import make_dir, write_file, write_private
from cqox_platform.ha.addresses import node_address
from cqox_platform.ha.patroni_client import PatroniClient, PatroniError
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import PG_OS_USER, as_pg_user
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import DB_ADMIN_USER, StackConfig
from cqox_platform.stack.etcd import NODE_COUNT, ensure_etcd_client, etcd_ca_cert
from cqox_platform.stack.postgres import HBA_RULES, PostgresService, postmaster_pid, provision_roles, server_settings
from cqox_platform.stack.process import find_binary, pid_alive, spawn, stop_pid, wait_until
from cqox_platform.stack.service import Service

SCOPE = "cqox-cluster"
PG_BIN_DIR = "/usr/lib/postgresql/15/bin"
REST_USER = "cqox-patroni"

#: Patroni's dynamic configuration at bootstrap; afterwards ``PATCH /config`` (or ``ha`` jobs) change it.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 4

#: Settings Patroni requires to be equal on every node, so they live in the DCS rather than in each node's file.
CLUSTER_WIDE = ("max_connections", "max_wal_senders", "max_worker_processes", "wal_level")


@dataclass(frozen=True)
class PatroniNode:
    """One node: its ports, its directory (owned by the postgres OS user) and its Patroni process."""

    stack: StackConfig
    index: int

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def pg_port(self) -> int:
        return self.stack.ports[f"pg{self.index}"]

    @property
    def rest_port(self) -> int:
        return self.stack.ports[f"patroni{self.index}"]

    @property
    def rest_url(self) -> str:
        return f"https://127.0.0.1:{self.rest_port}"

    @property
    def home(self) -> Path:
        return self.stack.path("patroni", self.name)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def config_path(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.stack.logs_dir / f"patroni-{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.stack.run_dir / f"patroni-{self.name}.pid"

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def postmaster_pid(self) -> int | None:
        """The PID of this node's PostgreSQL (what a failover test kills), or None when it is not running."""
        pid = postmaster_pid(self.data_dir)
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return pid_alive(self.read_pid())


class PatroniClusterService(Service):
    """The three nodes as one service: started together, stopped replicas first, reported through REST."""

    name = "patroni"
    binaries = ("patroni", "initdb", "pg_ctl", "postgres", "psql", "pg_basebackup", "pg_rewind")
    start_timeout = 180.0

    def __init__(self, stack: StackConfig) -> None:
        super().__init__(stack)
        # The single node's helpers own what both layouts share: archiver settings, admin password, OS user.
        self.base = PostgresService(stack)
        self.nodes = [PatroniNode(stack, i) for i in range(1, NODE_COUNT + 1)]

    @property
    def port(self) -> int | None:
        return self.nodes[0].rest_port

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (platform_cli().parent,)  # the virtualenv's patroni

    @property
    def url(self) -> str:
        return ",".join(node.rest_url for node in self.nodes)

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    def read_pid(self) -> int | None:
        return next((node.read_pid() for node in self.nodes if node.running()), None)

    def running(self) -> bool:
        return any(node.running() for node in self.nodes)

    # --- secrets and client ---------------------------------------------------------------------------------

    def _secret(self, name: str) -> str:
        path = self.stack.secrets_dir / name
        if not path.exists():
            write_private(path, secrets.token_urlsafe(32))
        return path.read_text().strip()

    @property
    def rest_password_file(self) -> Path:
        return self.stack.secrets_dir / "patroni-rest-password"

    def client(self) -> PatroniClient:
        return PatroniClient(
            urls=[node.rest_url for node in self.nodes],
            cacert=str(tls_files(self.stack.tls_dir).ca_cert),
            username=REST_USER,
            password_file=str(self.rest_password_file),
        )

    def healthy(self) -> bool:
        state = self.client().cluster()
        return (
            state.leader is not None
            and len(state.members) == len(self.nodes)
            and all(m.state in ("running", "streaming") for m in state.members)
        )

    # --- configuration --------------------------------------------------------------------------------------

    def node_config(self, node: PatroniNode) -> dict:
        ca = str(node.home / "ca.crt")
        cert, key = str(node.home / "server.crt"), str(node.home / "server.key")
        settings = server_settings(node.pg_port, node.socket_dir, self.base.archive_command(node.data_dir))
        for managed in ("listen_addresses", "port"):  # Patroni sets these from `listen`
            settings.pop(managed)
        cluster_wide = {name: settings.pop(name) for name in CLUSTER_WIDE}
        # pgAudit stays on from the start: Patroni sets `pgaudit.log TO none` while it creates roles with passwords.
        settings.update(ssl_cert_file=cert, ssl_key_file=key, ssl_ca_file=ca)
        tls_client = {"sslmode": "verify-full", "sslrootcert": ca}
        # /bin/sh runs it: each path is one quoted word, whatever the stack directory is called.
        fetch = (
            f"{shlex.quote(str(platform_cli()))} wal-fetch %f %p --standby "
            f"--config {shlex.quote(str(self.base.archiver_settings))}"
        )
        return {
            "scope": SCOPE,
            "namespace": "/service/",
            "name": node.name,
            "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
                "certfile": cert,
                "keyfile": key,
                "authentication": {"username": REST_USER, "password": self._secret("patroni-rest-password")},
            },
            # Patroni's own calls to other members' REST APIs verify them against the stack CA.
            "ctl": {"cacert": ca},
            # The node's own DCS identity from etcd's CA; etcd trusts nothing the stack CA signs (see stack.etcd).
            "etcd3": {
                "hosts": [f"{node_address(node.index)}:{self.stack.ports['etcd']}"],
                "protocol": "https",
                "cacert": str(node.home / "etcd-ca.crt"),
                "cert": str(node.home / "etcd-client.crt"),
                "key": str(node.home / "etcd-client.key"),
                # Keep the node on its own etcd address: no discovery of etcd's advertised URL.
                "use_proxies": True,
            },
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "primary_start_timeout": 0,
                    "synchronous_mode": self.stack.ha_sync,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            **cluster_wide,
                            "max_replication_slots": 10,
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            # Keeps streamed segments of the old timeline on a new leader long enough for
                            # wal-push to archive any the old leader had not (see backup.wal_catchup).
                            "wal_keep_size": "512MB",
                        },
                    },
                },
                "initdb": [
                    {"encoding": "UTF8"},
                    {"locale": "C.UTF-8"},
                    "data-checksums",
                    {"auth-local": "peer"},
                    {"auth-host": "scram-sha-256"},
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": PG_BIN_DIR,
                "pgpass": str(node.home / "pgpass"),
                "use_unix_socket": True,
                # New replicas and reinit clone with pg_basebackup; a spread checkpoint would make them wait
                # for minutes on a busy leader.
                "basebackup": [{"checkpoint": "fast"}],
                "authentication": {
                    "superuser": {
                        "username": PG_OS_USER,
                        "password": self._secret("patroni-superuser-password"),
                        **tls_client,
                    },
                    "replication": {
                        "username": "replicator",
                        "password": self._secret("patroni-replication-password"),
                        **tls_client,
                    },
                },
                "parameters": settings,
                "recovery_conf": {"restore_command": fetch},
                "pg_hba": list(HBA_RULES),
            },
        }

    def _write_node(self, node: PatroniNode) -> None:
        # The node's directories are PostgreSQL's user's: no write, chmod or chown follows a planted link.
        for directory in (node.home.parent, node.home, node.socket_dir):
            make_dir(directory, mode=0o700 if directory != node.home.parent else 0o755, owner=PG_OS_USER)
        tls = tls_files(self.stack.tls_dir)
        etcd_cert, etcd_key = ensure_etcd_client(self.stack, f"patroni-{node.name}")
        for src, name in (
            (tls.server_cert, "server.crt"),
            (tls.server_key, "server.key"),
            (tls.ca_cert, "ca.crt"),
            (etcd_cert, "etcd-client.crt"),
            (etcd_key, "etcd-client.key"),
            (etcd_ca_cert(self.stack), "etcd-ca.crt"),
        ):
            write_file(node.home / name, src.read_bytes(), mode=0o600, owner=PG_OS_USER)
        # YAML is a superset of JSON: no YAML writer needed.
        config = json.dumps(self.node_config(node), indent=2) + "\n"
        write_file(node.config_path, config, mode=0o600, owner=PG_OS_USER)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _write_passfile(self) -> None:
        """The admin's passfile for HAProxy's port and every node's, so tools can also reach one node."""
        password = self.base._ensure_password()
        ports = [self.stack.ports["postgres"], self.stack.ports["postgres_replicas"]]
        ports += [node.pg_port for node in self.nodes]
        write_private(self.base.passfile, "".join(f"127.0.0.1:{p}:*:{DB_ADMIN_USER}:{password}\n" for p in ports))

    def start(self) -> None:
        self.base._prepare_dirs()
        self._write_passfile()
        patroni = find_binary("patroni", self.binary_dirs)
        for node in self.nodes:
            if node.running():
                continue
            self._write_node(node)
            pid = spawn(
                [patroni, str(node.config_path)],
                log_path=node.log_path,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(node.home)},
                cwd=node.home,
                user=PG_OS_USER,
            )
            node.pid_file.parent.mkdir(parents=True, exist_ok=True)
            node.pid_file.write_text(f"{pid}\n")
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="Patroni cluster (one leader, every replica streaming)",
            log_path=self.nodes[0].log_path,
            alive=lambda: all(node.running() for node in self.nodes),
            interval=1.0,
        )

    def leader_node(self) -> PatroniNode:
        leader = self.client().cluster().leader
        node = next((n for n in self.nodes if n.name == leader), None)
        if node is None:
            raise PatroniError(f"the cluster has no leader (members answered at {self.url}).")
        return node

    def after_start(self) -> None:
        leader = self.leader_node()
        provision_roles(as_pg_user, leader.socket_dir, leader.pg_port, self.base._ensure_password())
        self._write_passfile()

    def stop(self) -> None:
        """Replicas first, then the leader, so stopping never triggers a failover."""
        leader: str | None = None
        with contextlib.suppress(PatroniError):
            leader = self.client().cluster().leader
        for node in sorted(self.nodes, key=lambda n: n.name == leader):
            pid = node.read_pid()
            if pid is not None:
                stop_pid(pid, timeout=90)
            # Patroni stops PostgreSQL on SIGTERM; if it had to be killed, PostgreSQL would outlive it.
            postmaster = node.postmaster_pid()
            if postmaster is not None:
                stop_pid(postmaster, sig=signal.SIGINT, timeout=60)
            with contextlib.suppress(FileNotFoundError):
                node.pid_file.unlink()

    def env(self) -> dict[str, str]:
        return {
            "CQOX_PATRONI_URLS": self.url,
            "CQOX_PATRONI_USER": REST_USER,
            "CQOX_PATRONI_PASSWORD_FILE": str(self.rest_password_file),
            "CQOX_PATRONI_CACERT": str(tls_files(self.stack.tls_dir).ca_cert),
            # Shared by the three nodes: whichever leads archives with it.
            "CQOX_WAL_ARCHIVER_CONFIG": str(self.base.archiver_settings),
        }
