"""Vault configuration and transport security as assets and checks (group ``security``)."""

from pathlib import Path

import dagster as dg

from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets.vault_setup import DatabaseEngineSettings, configure_vault

GROUP = "security"


class VaultConfigSettings(dg.Config):
    """Where the platform's AppRole credentials go, and whether to set up the database secrets engine."""

    approle_file: str = dg.EnvVar("CQOX_VAULT_APPROLE_FILE")  # type: ignore[assignment]
    configure_database: bool = True
    db_owner_role: str = "cqox_admin"
    db_default_ttl: str = "1h"
    db_max_ttl: str = "24h"


@dg.asset(
    group_name=GROUP,
    kinds={"vault"},
    description="Vault as code: KV v2, Transit key cqox-datasets, policies from deploy/vault/policies, the "
    "platform's AppRole, audit device, and the database secrets engine for short-lived PostgreSQL users.",
)
def vault_config(
    context: dg.AssetExecutionContext,
    config: VaultConfigSettings,
    vault_admin: VaultResource,
    postgres_admin: PostgresResource,
) -> dg.MaterializeResult:
    database = None
    if config.configure_database:
        database = DatabaseEngineSettings(
            host=postgres_admin.host,
            port=postgres_admin.port,
            dbname=postgres_admin.dbname,
            admin_user=postgres_admin.user,
            admin_password=postgres_admin.admin_password(),
            sslrootcert=postgres_admin.sslrootcert or "",
            owner_role=config.db_owner_role,
            default_ttl=config.db_default_ttl,
            max_ttl=config.db_max_ttl,
        )
    client = vault_admin.client()
    state = vault_admin.call(
        "configuring Vault",
        lambda: configure_vault(
            client, verify=vault_admin.cacert or True, approle_file=Path(config.approle_file), database=database
        ),
    )
    for change in state.changed:
        context.log.info(change)
    return dg.MaterializeResult(
        metadata={
            "vault": vault_admin.addr,
            "engines": dg.MetadataValue.json(state.engines),
            "policies": dg.MetadataValue.json(state.policies),
            "auth_methods": dg.MetadataValue.json(state.auth_methods),
            "audit_devices": dg.MetadataValue.json(state.audit_devices),
            "transit_keys": dg.MetadataValue.json(state.transit_keys),
            "database_roles": dg.MetadataValue.json(state.database_roles),
            "changed_this_run": dg.MetadataValue.json(state.changed),
        }
    )


defs = dg.Definitions(assets=[vault_config])
