"""``PostgresResource``: the Dagster adapter over the core ``PostgresClient`` (``cqox_platform.db.client``).

Built from the settings three ways: the admin login (passfile) with ``from_settings(settings)``; the runtime
login with ``from_settings(settings, vault=...)``, short-lived Vault-issued users with DML only when
``CQOX_PG_VAULT_ROLE`` is set; and the migrator login with ``from_settings(settings, vault=..., migrator=True)``,
Vault-issued users acting as the schema owner when ``CQOX_PG_VAULT_MIGRATOR_ROLE`` is set (``db/roles.py``).
Either falls back to the passfile login when its role is unset.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from cqox_platform.db.client import LEASE_RENEW_FRACTION, PostgresClient  # noqa: F401 - re-exported
from cqox_platform.resources.settings_backed import SettingsBackedResource, path_str, unset
from cqox_platform.resources.vault import VaultResource
from cqox_platform.settings import Settings, get_settings


class PostgresResource(SettingsBackedResource):
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
    #: When set, log in with short-lived credentials from Vault's database secrets engine for this role.
    vault: VaultResource | None = None
    vault_db_role: str | None = None

    _client: PostgresClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, vault: VaultResource | None = None, migrator: bool = False
    ) -> PostgresResource:
        """The admin login (passfile); with ``vault``, Vault-issued users of the runtime role
        (``CQOX_PG_VAULT_ROLE``) or, with ``migrator``, of the migrator role (``CQOX_PG_VAULT_MIGRATOR_ROLE``)."""
        s = settings or get_settings()
        vault_role = s.pg_vault_migrator_role if migrator else s.pg_vault_role
        server = ["pg_host", "pg_port", "pg_db", "pg_sslrootcert"]
        fields = {
            "host": s.pg_host or "",
            "port": s.pg_port or 5432,
            "dbname": s.pg_db or "",
            "sslrootcert": path_str(s.pg_sslrootcert),
        }
        if vault is not None and vault_role:
            return cls(
                **fields,
                user="vault-issued",
                vault=vault,
                vault_db_role=vault_role,
                unset_settings=unset(s, *server),
            )
        login = {"user": s.pg_user or "", "passfile": path_str(s.pg_passfile)}
        return cls(**fields, **login, unset_settings=unset(s, *server, "pg_user", "pg_passfile"))

    def client(self) -> PostgresClient:
        if self._client is None:
            self.require_settings()
            self._client = PostgresClient(
                self.host,
                self.port,
                self.dbname,
                self.user,
                sslmode=self.sslmode,
                sslrootcert=self.sslrootcert,
                passfile=self.passfile,
                connect_timeout=self.connect_timeout,
                application_name=self.application_name,
                prepare_threshold=self.prepare_threshold,
                pool_max_size=self.pool_max_size,
                vault=self.vault if self.vault_db_role else None,
                vault_db_role=self.vault_db_role,
            )
        return self._client

    # --- delegation -------------------------------------------------------------------------------------------

    @property
    def uses_vault(self) -> bool:
        return self.vault is not None and bool(self.vault_db_role)

    def conninfo(self) -> dict[str, str | int]:
        return self.client().conninfo()

    def admin_password(self) -> str:
        return self.client().admin_password()

    def describe(self) -> str:
        return self.client().describe()

    @contextmanager
    def connect(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with self.client().connect(autocommit=autocommit) as conn:
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self.client().connection() as conn:
            yield conn

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close(warn=context.log.warning if context.log else None)
            self._client = None
