"""Who Vault-issued migrator logins act as, and for how long: settings of the installation, never of a run.

Vault runs the creation statements as the database admin, so the owner role and the lifetimes are spliced into
SQL with the admin's rights: a run that could choose them could hand every migrator login ``postgres``.
"""

from __future__ import annotations

import dagster as dg
import pytest

from cqox_platform.settings import Settings, SettingsError


def test_run_config_cannot_choose_the_owner_role_or_the_lifetimes():
    """Failed before: ``db_owner_role: postgres`` and a 100-year TTL were accepted run config."""
    from cqox_platform.definitions import defs

    job = defs.get_job_def("vault_config_job")
    for field, value in (("db_owner_role", "postgres"), ("db_default_ttl", "876000h"), ("db_max_ttl", "876000h")):
        with pytest.raises(dg.DagsterInvalidConfigError, match=field):
            dg.validate_run_config(job, {"ops": {"vault_config": {"config": {field: value}}}})


def _limits(monkeypatch, **env: str):
    from cqox_platform.secrets.vault_setup import DatabaseLoginLimits

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return DatabaseLoginLimits.from_settings(Settings())


def test_the_defaults_are_the_stack_owner_and_one_hour_logins_of_at_most_a_day(monkeypatch):
    limits = _limits(monkeypatch)
    assert (limits.owner_role, limits.default_ttl_seconds, limits.max_ttl_seconds) == ("cqox_admin", 3600, 86400)
    statements = "\n".join(limits.migrator_creation_statements())
    assert 'GRANT "cqox_admin" TO "{{name}}";' in statements and "{{owner}}" not in statements


@pytest.mark.parametrize(
    "role",
    [
        "postgres",  # the superuser
        "pg_write_server_files",  # a built-in role
        "cqox_runtime",  # the DML group: not the schema owner
        'cqox_admin"; DROP ROLE postgres; --',  # SQL in an identifier
        "cqox_Admin",  # quoted identifiers are case-sensitive: a different role than cqox_admin
        "cqox_",
        "cqox_" + "a" * 59,  # over PostgreSQL's 63-byte identifier limit
        "",
    ],
)
def test_an_owner_role_outside_the_allow_list_is_refused_naming_the_setting(monkeypatch, role):
    with pytest.raises(SettingsError, match="CQOX_VAULT_DB_OWNER_ROLE") as caught:
        _limits(monkeypatch, CQOX_VAULT_DB_OWNER_ROLE=role)
    assert "set CQOX_VAULT_DB_OWNER_ROLE to" in str(caught.value)


def test_a_custom_owner_in_the_platform_namespace_is_accepted(monkeypatch):
    limits = _limits(monkeypatch, CQOX_VAULT_DB_OWNER_ROLE="cqox_schema_owner")
    assert "ALTER ROLE \"{{name}}\" SET role = 'cqox_schema_owner';" in limits.migrator_creation_statements()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CQOX_VAULT_DB_MAX_TTL": "876000h"}, "CQOX_VAULT_DB_MAX_TTL='876000h' is over the cap of 24h"),
        ({"CQOX_VAULT_DB_MAX_TTL": "25h"}, "CQOX_VAULT_DB_MAX_TTL='25h' is over the cap of 24h"),
        ({"CQOX_VAULT_DB_DEFAULT_TTL": "2h", "CQOX_VAULT_DB_MAX_TTL": "1h"}, "longer than CQOX_VAULT_DB_MAX_TTL"),
        ({"CQOX_VAULT_DB_DEFAULT_TTL": "0"}, "CQOX_VAULT_DB_DEFAULT_TTL='0' must be a positive duration"),
        ({"CQOX_VAULT_DB_MAX_TTL": "forever"}, "CQOX_VAULT_DB_MAX_TTL='forever' must be a positive duration"),
    ],
)
def test_lifetimes_are_positive_and_capped(monkeypatch, env, message):
    with pytest.raises(SettingsError, match=message):
        _limits(monkeypatch, **env)


def test_vault_config_refuses_a_bad_owner_role_before_touching_vault(monkeypatch):
    """The asset validates the settings first: a failed run names the variable, and nothing was configured."""
    from dagster_aws.s3 import S3Resource

    from assets.security import vault_config
    from cqox_platform.resources.postgres import PostgresResource
    from cqox_platform.resources.vault import VaultResource

    monkeypatch.setenv("CQOX_VAULT_DB_OWNER_ROLE", "postgres")
    result = dg.materialize(
        [vault_config],
        resources={
            # Nothing listens here: reaching either would fail differently.
            "vault_admin": VaultResource(addr="https://127.0.0.1:9", token_file="/nonexistent"),
            "postgres_admin": PostgresResource(host="127.0.0.1", port=9, passfile="/nonexistent"),
            "s3": S3Resource(endpoint_url="https://127.0.0.1:9"),
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "CQOX_VAULT_DB_OWNER_ROLE='postgres'" in str(failure.step_failure_data.error)
