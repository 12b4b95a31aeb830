"""``PostgresResource``: psycopg 3 connections to the CQOx database, TLS verified, password from a passfile.

Configured from the environment that ``cqox-platform stack env`` prints (``CQOX_PG_*``). The password is
never a config value: libpq reads it from ``passfile`` so it cannot reach the Dagster event log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import PrivateAttr


class PostgresResource(dg.ConfigurableResource):
    """Connections to the CQOx database through a small pool, verified TLS by default."""

    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = "cqox_prod"
    user: str = "cqox_admin"
    sslmode: str = "verify-full"
    sslrootcert: str | None = None
    passfile: str | None = None
    connect_timeout: int = 10
    application_name: str = "cqox-platform"
    #: PGlite-TimescaleDB cannot handle prepared statements; real servers keep psycopg's default (5).
    prepare_threshold: int | None = 5
    pool_max_size: int = 4

    _pool: ConnectionPool | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> PostgresResource:
        """The resource the code location uses: every field from ``CQOX_PG_*`` variables."""
        return cls(
            host=dg.EnvVar("CQOX_PG_HOST"),
            port=dg.EnvVar.int("CQOX_PG_PORT"),
            dbname=dg.EnvVar("CQOX_PG_DB"),
            user=dg.EnvVar("CQOX_PG_USER"),
            sslrootcert=dg.EnvVar("CQOX_PG_SSLROOTCERT"),
            passfile=dg.EnvVar("CQOX_PG_PASSFILE"),
        )

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
        if self.passfile:
            params["passfile"] = self.passfile
        return params

    def describe(self) -> str:
        """Where this resource points, for error messages and metadata (no secret in it)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

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
                kwargs={**self.conninfo(), "prepare_threshold": self.prepare_threshold},
                min_size=0,
                max_size=self.pool_max_size,
                open=True,
                name="cqox-postgres",
            )
        with self._pool.connection() as conn:
            yield conn

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
