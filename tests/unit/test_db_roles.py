"""Issue 13, item 11(e): which Dagster definitions log in as the migrator (DDL) and which as the runtime (DML)."""

from __future__ import annotations

import dagster as dg
import pytest

from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets.vault_setup import DB_MIGRATOR_ROLE, DB_ROLE
from cqox_platform.settings import Settings

#: Definitions that change the schema or need ownership: migrations, the drift check that reads what the
#: migrator recorded, pg_partman maintenance (creates partitions, writes partman's config), dropping partitions
#: and the check that reads partman's retention, refreshing aggregates the migrator owns.
NEEDS_OWNER = {
    "cqox_schema",
    "schema_drift",
    "metrics_partitions",
    "metrics_retention",
    "retention_enforced",
    "metrics_rollups",
}


def _resources_by_definition() -> dict[str, set[str]]:
    """Each asset and asset check of the code location -> the resource keys it requires."""
    from cqox_platform.definitions import defs

    uses: dict[str, set[str]] = {}
    for assets_def in defs.get_repository_def().asset_graph.assets_defs:
        for name in [k.path[-1] for k in assets_def.keys] + [c.name for c in assets_def.check_keys]:
            uses.setdefault(name, set()).update(assets_def.required_resource_keys)
    return uses


def test_ddl_definitions_use_the_migrator_and_nothing_else_does():
    from cqox_platform.definitions import defs

    uses = _resources_by_definition()
    assert {name for name, keys in uses.items() if "postgres_migrator" in keys} == NEEDS_OWNER
    assert not [name for name in NEEDS_OWNER if "postgres" in uses[name]]
    # The rest of the platform's table writes stay on the runtime login.
    runtime = {name for name, keys in uses.items() if "postgres" in keys}
    assert {"encrypted_datasets", "dataset_key_rotation", "slo_report", "canary_rollout", "rollups_fresh"} <= runtime
    assert "postgres_migrator" in defs.resources


@pytest.fixture
def clean_env(monkeypatch):
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_settings_picks_the_migrator_or_the_runtime_role(clean_env):
    for name, value in {
        "CQOX_PG_HOST": "db",
        "CQOX_PG_PORT": "6543",
        "CQOX_PG_DB": "cqox",
        "CQOX_PG_SSLROOTCERT": "/ca.crt",
        "CQOX_PG_USER": "admin",
        "CQOX_PG_PASSFILE": "/pgpass",
        "CQOX_PG_VAULT_ROLE": DB_ROLE,
        "CQOX_PG_VAULT_MIGRATOR_ROLE": DB_MIGRATOR_ROLE,
    }.items():
        clean_env.setenv(name, value)
    vault = VaultResource(addr="https://vault:8200")
    runtime = PostgresResource.from_settings(Settings(), vault=vault)
    migrator = PostgresResource.from_settings(Settings(), vault=vault, migrator=True)
    assert runtime.describe() == "postgresql://vault:cqox-platform@db:6543/cqox"
    assert migrator.describe() == "postgresql://vault:cqox-migrator@db:6543/cqox"
    clean_env.delenv("CQOX_PG_VAULT_MIGRATOR_ROLE")
    # No migrator role configured: migrations take the admin login, never the runtime's DML-only user.
    fallback = PostgresResource.from_settings(Settings(), vault=vault, migrator=True)
    assert not fallback.uses_vault and fallback.describe() == "postgresql://admin@db:6543/cqox"


def test_the_stack_exports_both_vault_database_roles(tmp_path):
    from cqox_platform.stack import Stack, StackConfig
    from cqox_platform.stack.config import DEFAULT_PORTS

    env = Stack(StackConfig(root=tmp_path, ports=dict(DEFAULT_PORTS))).env()
    assert env["CQOX_PG_VAULT_ROLE"] == DB_ROLE
    assert env["CQOX_PG_VAULT_MIGRATOR_ROLE"] == DB_MIGRATOR_ROLE


def test_a_materialization_without_the_migrator_resource_is_refused():
    from assets import database

    try:
        dg.materialize([database.cqox_schema], resources={"postgres": PostgresResource()})
    except dg.DagsterInvalidDefinitionError as exc:
        assert "postgres_migrator" in str(exc)
    else:
        raise AssertionError("cqox_schema must require the migrator resource")
