"""``PostgresClient``: psycopg 3 connections to the CQOx database over verified TLS.

Credentials come from one of two places, neither of them a value that could reach a log: short-lived users
issued by Vault's database secrets engine (``vault`` + ``vault_db_role``; leases are renewed and replaced before
they expire), or a libpq ``passfile`` (the local stack's bootstrap admin). ``PostgresResource`` is the code
location's adapter over it; the CLI builds it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from cqox_platform.errors import VaultError

#: Renew a database lease when less than this share of it is left; replace it when renewal cannot extend it.
LEASE_RENEW_FRACTION = 1 / 3


class DatabaseCredentials(Protocol):
    """What the client needs from Vault (``VaultClient`` or ``VaultResource``)."""

    def database_credentials(self, role: str) -> dict[str, Any]: ...
    def renew_lease(self, lease_id: str, increment: int | None = None) -> int: ...
    def revoke_lease(self, lease_id: str) -> None: ...


class PostgresClient:
    """Connections to the CQOx database through a small pool, verified TLS by default."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5432,
        dbname: str = "cqox_prod",
        user: str = "cqox_admin",
        *,
        sslmode: str = "verify-full",
        sslrootcert: str | None = None,
        passfile: str | None = None,
        connect_timeout: int = 10,
        application_name: str = "cqox-platform",
        prepare_threshold: int | None = 5,
        pool_max_size: int = 4,
        vault: DatabaseCredentials | None = None,
        vault_db_role: str | None = None,
    ) -> None:
        self.host, self.port, self.dbname, self.user = host, port, dbname, user
        self.sslmode, self.sslrootcert, self.passfile = sslmode, sslrootcert, passfile
        self.connect_timeout, self.application_name = connect_timeout, application_name
        #: PGlite-TimescaleDB cannot handle prepared statements; real servers keep psycopg's default (5).
        self.prepare_threshold = prepare_threshold
        self.pool_max_size = pool_max_size
        self.vault, self.vault_db_role = vault, vault_db_role
        self._pool: ConnectionPool | None = None
        self._lease: dict[str, Any] | None = None
        self._lease_expires_at = 0.0

    def __repr__(self) -> str:
        return f"PostgresClient({self.describe()!r})"

    def _vault_credentials(self) -> dict[str, Any]:
        """A live lease: reuse it, renew it when a third is left, or get a new one when renewal falls short."""
        assert self.vault is not None and self.vault_db_role
        now = time.monotonic()
        if self._lease is not None:
            remaining = self._lease_expires_at - now
            if remaining > self._lease["lease_duration"] * LEASE_RENEW_FRACTION:
                return self._lease
            try:
                duration = self.vault.renew_lease(self._lease["lease_id"], self._lease["lease_duration"])
                if duration > remaining + 1:  # renewal extended it; at max TTL it cannot
                    self._lease_expires_at = now + duration
                    return self._lease
            except VaultError:
                pass  # expired or revoked: fall through to a fresh user
        self._lease = self.vault.database_credentials(self.vault_db_role)
        self._lease_expires_at = now + self._lease["lease_duration"]
        return self._lease

    @property
    def uses_vault(self) -> bool:
        return self.vault is not None and bool(self.vault_db_role)

    def conninfo(self) -> dict[str, str | int]:
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": self.application_name,
        }
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        if self.uses_vault:
            lease = self._vault_credentials()
            params["user"], params["password"] = lease["username"], lease["password"]
        elif self.passfile:
            params["passfile"] = self.passfile
        return params

    def admin_password(self) -> str:
        """The passfile's password for this host, port and user (to hand the admin login to Vault's engine)."""
        if not self.passfile:
            raise VaultError("no passfile configured: the database admin password is unknown.")
        for line in Path(self.passfile).read_text().splitlines():
            host, port, _db, user, password = line.split(":", 4)
            if host in (self.host, "*") and port in (str(self.port), "*") and user == self.user:
                return password
        raise VaultError(f"passfile {self.passfile} has no entry for {self.user}@{self.host}:{self.port}.")

    def describe(self) -> str:
        """Where this client points, for error messages and metadata (no secret in it)."""
        user = f"vault:{self.vault_db_role}" if self.uses_vault else self.user
        return f"postgresql://{user}@{self.host}:{self.port}/{self.dbname}"

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A dedicated connection (for migrations and COPY); closed on exit, committed unless it raised."""
        conn = psycopg.connect(**self.conninfo(), autocommit=autocommit)
        conn.prepare_threshold = self.prepare_threshold
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for short queries; the transaction commits when the block succeeds."""
        if self._pool is None:
            self._pool = ConnectionPool(
                # A callable: each new pooled connection gets current (possibly renewed) credentials.
                kwargs=lambda: {**self.conninfo(), "prepare_threshold": self.prepare_threshold},
                min_size=0,
                max_size=self.pool_max_size,
                open=True,
                name="cqox-postgres",
                # Recycle connections well inside a Vault lease so none outlives its user.
                max_lifetime=600.0,
                # A connection the server or HAProxy closed (a failover, a restart) is replaced on checkout
                # instead of failing the caller's first query.
                check=ConnectionPool.check_connection,
            )
        with self._pool.connection() as conn:
            yield conn

    def close(self, warn: Callable[[str], None] | None = None) -> None:
        """Close the pool and revoke the Vault lease early (a step's user should not outlive the step)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._lease is not None and self.vault is not None:
            try:  # Vault would drop the user at TTL anyway
                self.vault.revoke_lease(self._lease["lease_id"])
            except VaultError as exc:
                if warn:
                    warn(f"could not revoke the database lease early: {exc}")
            self._lease = None
