"""PostgreSQL 15 of the local stack: TLS 1.3 only, SCRAM only over TCP, WAL archiving on, pgAudit loaded.

Debian's binaries refuse to run as root, so when the stack runs as root every server command goes through
``runuser -u postgres``; the data directory is owned by that user. The admin password is generated once,
kept in the stack's ``secrets/`` (mode 0600) and handed to clients as a libpq passfile, never on a command line
or in the environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import signal
import subprocess
from pathlib import Path

import psycopg

from cqox_platform.backup.wal.spool import fast_archive_command, sync_archive_command
from cqox_platform.errors import StackDirError
from cqox_platform.fsutil import make_dir, read_file, write_file, write_private
from cqox_platform.installation import platform_cli
from cqox_platform.pgserver import PG_OS_USER, as_pg_user
from cqox_platform.settings import DR_ONLY_ENV_PREFIX, child_env, get_settings
from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.config import DAGSTER_DB_NAME, DB_ADMIN_USER, DB_NAME, StackConfig
from cqox_platform.stack.process import find_binary, run_checked, stop_pid, wait_until
from cqox_platform.stack.service import Service


def scram_sha256_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5803), so the clear password never reaches the server
    or its logs (pgAudit logs role changes)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class PostgresService(Service):
    name = "postgres"
    binaries = ("initdb", "pg_ctl", "postgres", "psql")
    start_timeout = 90.0

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def archiver_dir(self) -> Path:
        """The WAL archiver's settings (written by ``vault_config``), private to the postgres OS user."""
        return self.home / "archiver"

    @property
    def archiver_settings(self) -> Path:
        return self.archiver_dir / "archiver.json"

    def archive_command(self, data_dir: Path | None = None) -> str:
        """``archive_command`` for the server whose data directory is ``data_dir`` (default: this one's).

        Async (the default, ``CQOX_WAL_PUSH_MODE``): a shell test of the pusher's marker for ``%f``, falling back
        to ``wal-push --async`` (see ``backup.wal_async_client``); sync: ``wal-push %p``, one upload per call.
        """
        if get_settings().wal_push_mode == "sync":
            return sync_archive_command(platform_cli(), self.archiver_settings)
        return fast_archive_command(platform_cli(), self.archiver_settings, data_dir or self.data_dir)

    @property
    def log_path(self) -> Path:
        # Written by the postgres OS user, so it lives in the directory that user owns.
        return self.home / "server.log"

    @property
    def password_file(self) -> Path:
        return self.stack.secrets_dir / "postgres-password"

    @property
    def passfile(self) -> Path:
        return self.stack.secrets_dir / "pgpass"

    @property
    def url(self) -> str:
        return f"postgresql://{DB_ADMIN_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def read_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)

    def conninfo(self, dbname: str = DB_NAME) -> dict[str, str | int]:
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": DB_ADMIN_USER,
            "sslmode": "verify-full",
            "sslrootcert": str(tls_files(self.stack.tls_dir).ca_cert),
            "passfile": str(self.passfile),
            "connect_timeout": 5,
        }

    def healthy(self) -> bool:
        with psycopg.connect(**self.conninfo()) as conn:
            return conn.execute("SELECT current_setting('ssl')").fetchone() == ("on",)

    # --- start ---------------------------------------------------------------------------------------------

    def prepare_archiver_dir(self) -> None:
        """The directories the archiver's settings file goes into, owned by the postgres OS user."""
        self._prepare_dirs()

    def _prepare_dirs(self) -> None:
        # Directories PostgreSQL's user owns: chmod/chown them through descriptors, never through a planted link.
        for directory in (self.home, self.socket_dir, self.archiver_dir):
            make_dir(directory, mode=0o700, owner=PG_OS_USER)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise StackDirError(
                    "the `postgres` OS user does not exist; install Debian package postgresql-15."
                ) from None
            # The postgres user must be able to traverse every parent of its data directory.
            probe = as_pg_user(["test", "-w", str(self.home)])
            if subprocess.run(probe, capture_output=True).returncode != 0:
                raise StackDirError(
                    f"the postgres OS user cannot write {self.home}: every parent directory needs o+x "
                    f"(chmod o+x on each), or choose a stack directory under /tmp with --dir."
                )
            # archive_command runs the platform's CLI as that user too: its interpreter must be reachable.
            probe = as_pg_user([str(platform_cli()), "--help"])
            if subprocess.run(probe, capture_output=True).returncode != 0:
                raise StackDirError(
                    f"the postgres OS user cannot run {platform_cli()} (PostgreSQL's archive_command): the "
                    f"virtualenv and its interpreter must be readable by it. Recreate the virtualenv with "
                    f"/usr/bin/python3 (scripts/bootstrap.sh does) in a directory whose parents have o+x."
                )

    def _ensure_password(self) -> str:
        self.stack.secrets_dir.mkdir(parents=True, exist_ok=True)
        self.stack.secrets_dir.chmod(0o700)
        if not self.password_file.exists():
            write_private(self.password_file, secrets.token_urlsafe(32))
        password = self.password_file.read_text().strip()
        write_private(self.passfile, f"127.0.0.1:{self.port}:*:{DB_ADMIN_USER}:{password}\n")
        return password

    def _initdb(self) -> None:
        run_checked(
            as_pg_user(
                [
                    find_binary("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                    "-U",
                    PG_OS_USER,
                ]
            ),
            what=f"initdb of {self.data_dir}",
        )

    def _write_config(self) -> None:
        tls = tls_files(self.stack.tls_dir)
        for src, name in ((tls.server_cert, "server.crt"), (tls.server_key, "server.key"), (tls.ca_cert, "ca.crt")):
            write_file(self.data_dir / name, src.read_bytes(), mode=0o600, owner=PG_OS_USER)
        settings = server_settings(self.port, self.socket_dir, self.archive_command())
        settings.update(ssl_cert_file="server.crt", ssl_key_file="server.key", ssl_ca_file="ca.crt")
        config = "# Written by cqox-platform stack; changes are overwritten on `stack up`.\n" + "".join(
            f"{key} = {conf_literal(value)}\n" for key, value in settings.items()
        )
        # The data directory is PostgreSQL's user's: every file root writes there replaces the name atomically.
        write_file(self.data_dir / "cqox.conf", config, mode=0o600, owner=PG_OS_USER)
        main_conf = self.data_dir / "postgresql.conf"
        text = read_file(main_conf).decode()
        if "include_if_exists = 'cqox.conf'" not in text:
            write_file(main_conf, text + "\ninclude_if_exists = 'cqox.conf'\n", mode=0o600, owner=PG_OS_USER)
        write_file(
            self.data_dir / "pg_hba.conf",
            "# TCP only with TLS and SCRAM; the unix socket only for the postgres OS user (bootstrap).\n"
            + "".join(f"{rule}\n" for rule in HBA_RULES),
            mode=0o600,
            owner=PG_OS_USER,
        )

    def start(self) -> None:
        self._prepare_dirs()
        self._ensure_password()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_config()
        run_checked(
            as_pg_user(
                [
                    find_binary("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "start",
                ]
            ),
            what=f"pg_ctl start (log: {self.log_path})",
            timeout=self.start_timeout + 10,
            # PostgreSQL and its archive_command are the primary side: they never learn where the DR region's
            # keys are, even when `stack up` runs under an exported `stack env`.
            env=child_env(drop_prefixes=(DR_ONLY_ENV_PREFIX,)),
        )

    def after_start(self) -> None:
        password = self._ensure_password()
        provision_roles(as_pg_user, self.socket_dir, self.port, password)
        wait_until(self.healthy, timeout=30, what="PostgreSQL TLS login as cqox_admin", log_path=self.log_path)

    def stop(self) -> None:
        pid = self.read_pid()
        if pid is not None:
            stop_pid(pid, sig=signal.SIGINT, timeout=60)  # SIGINT = fast shutdown

    def env(self) -> dict[str, str]:
        return {
            **client_env(self.stack, self.port, self.passfile),
            "CQOX_PG_DATA": str(self.data_dir),
            "CQOX_WAL_ARCHIVER_CONFIG": str(self.archiver_settings),
        }


def postmaster_pid(data_dir: Path) -> int | None:
    """The PID PostgreSQL recorded in ``postmaster.pid`` (whether or not that process still runs)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def client_env(stack: StackConfig, port: int, passfile: Path) -> dict[str, str]:
    """What clients of the CQOX database read: the single node's port, or HAProxy's in front of Patroni."""
    tls = tls_files(stack.tls_dir)
    return {
        "CQOX_PG_HOST": "127.0.0.1",
        "CQOX_PG_PORT": str(port),
        "CQOX_PG_DB": DB_NAME,
        "CQOX_PG_USER": DB_ADMIN_USER,
        "CQOX_PG_SSLROOTCERT": str(tls.ca_cert),
        "CQOX_PG_PASSFILE": str(passfile),
        "CQOX_PG_DSN": (
            f"host=127.0.0.1 port={port} dbname={DB_NAME} user={DB_ADMIN_USER} "
            f"sslmode=verify-full sslrootcert={tls.ca_cert} passfile={passfile}"
        ),
        "CQOX_DAGSTER_PG_DB": DAGSTER_DB_NAME,
        # The Vault database roles the platform logs in with once `vault_config` has configured them: the
        # runtime (DML only) and the migrator (schema owner) of cqox_platform.db.roles.
        "CQOX_PG_VAULT_ROLE": "cqox-platform",
        "CQOX_PG_VAULT_MIGRATOR_ROLE": "cqox-migrator",
        # libpq's own variables, so psql and Dagster's psycopg2 connect verified with no extra flags.
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGDATABASE": DB_NAME,
        "PGUSER": DB_ADMIN_USER,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(tls.ca_cert),
        "PGPASSFILE": str(passfile),
    }


#: Client authentication: TCP only with TLS and SCRAM; the unix socket only for the postgres OS user.
HBA_RULES = (
    f"local   all          {PG_OS_USER}                 peer",
    "hostssl all          all          127.0.0.1/32    scram-sha-256",
    "hostssl replication  all          127.0.0.1/32    scram-sha-256",
)


def conf_literal(value: object) -> str:
    """A postgresql.conf value: quoted, with quotes doubled (every GUC type accepts the quoted form)."""
    return "'" + str(value).replace("'", "''") + "'"


def server_settings(port: int, socket_dir: Path, archive_command: str) -> dict[str, object]:
    """The server settings every CQOX node shares, single or under Patroni: TLS 1.3, SCRAM, archiving, tuning."""
    return {
        "listen_addresses": "127.0.0.1",
        "port": port,
        "unix_socket_directories": str(socket_dir),
        "ssl": "on",
        "ssl_min_protocol_version": "TLSv1.3",
        "password_encryption": "scram-sha-256",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command,
        "archive_timeout": "5min",
        "max_wal_senders": 10,
        "shared_preload_libraries": "pgaudit",
        "pgaudit.log": "ddl, role",
        "pgaudit.log_parameter": "off",
        # Tuning from the CQOX roadmap (phase 1), for a 2-core development machine as for production.
        "max_connections": 200,
        "shared_buffers": "2GB",
        "effective_cache_size": "6GB",
        "maintenance_work_mem": "512MB",
        "checkpoint_completion_target": 0.9,
        "wal_buffers": "16MB",
        "default_statistics_target": 100,
        "random_page_cost": 1.1,
        "effective_io_concurrency": 200,
        "work_mem": "10MB",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "max_worker_processes": 4,
        "max_parallel_workers_per_gather": 2,
        "max_parallel_workers": 4,
        "max_parallel_maintenance_workers": 2,
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_min_messages": "warning",
    }


def provision_roles(as_pg_user, socket_dir: Path, port: int, password: str) -> None:
    """Create the ``cqox_admin`` role (SCRAM verifier only), the CQOX and Dagster databases and pgAudit."""
    verifier = scram_sha256_verifier(password)
    sql = f"""
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', '{DB_ADMIN_USER}')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DB_ADMIN_USER}') \\gexec
ALTER ROLE {DB_ADMIN_USER} PASSWORD '{verifier}';
SELECT format('CREATE DATABASE %I OWNER %I', '{DB_NAME}', '{DB_ADMIN_USER}')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}') \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', '{DAGSTER_DB_NAME}', '{DB_ADMIN_USER}')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DAGSTER_DB_NAME}') \\gexec
\\connect {DB_NAME}
CREATE EXTENSION IF NOT EXISTS pgaudit;
"""
    run_checked(
        as_pg_user(
            [
                find_binary("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(socket_dir),
                "-p",
                str(port),
                "-U",
                PG_OS_USER,
                "-d",
                "postgres",
            ]
        ),
        what="creating the cqox_admin role and databases",
        input_text=sql,
    )
