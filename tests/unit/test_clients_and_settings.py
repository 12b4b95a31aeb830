"""Resources built from the settings contract, the CLI's client context, and the clients' light imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.settings import Settings, SettingsError

CLI_DIR = Path(__file__).resolve().parents[2] / "cqox_platform" / "cli"
NO_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def clean_env(monkeypatch):
    """No platform variable set, as in a fresh checkout."""
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_backups_use_the_transit_key_the_cli_uses(clean_env):
    # The drift: the CLI honoured CQOX_BACKUP_TRANSIT_KEY while the resource hard-coded "cqox-backups".
    clean_env.setenv("CQOX_BACKUP_TRANSIT_KEY", "cqox-backups-2027")
    from cqox_platform.cli import context

    context.settings.cache_clear()
    try:
        assert BackupStorageResource.from_settings().transit_key == "cqox-backups-2027"
        assert context.settings().backup_transit_key == "cqox-backups-2027"
    finally:
        context.settings.cache_clear()


def test_resources_load_without_environment_and_fail_at_first_use_naming_the_variable(clean_env):
    vault = VaultResource.from_settings()
    assert vault.unset_settings == ["vault_addr", "vault_approle_file"]
    with pytest.raises(SettingsError, match=r"^VAULT_ADDR is not set \(Vault \(OpenBao\) address\); for the local"):
        vault.read_secret("anything")
    with pytest.raises(SettingsError, match="CQOX_VAULT_ROOT_TOKEN_FILE is not set"):
        clean_env.setenv("VAULT_ADDR", "https://127.0.0.1:1")
        VaultResource.from_settings(admin=True).client()
    with pytest.raises(SettingsError, match="CQOX_PROMETHEUS_URL is not set"):
        PrometheusResource.from_settings().query("up")
    with pytest.raises(SettingsError, match="CQOX_PG_HOST is not set"):
        PostgresResource.from_settings().conninfo()
    assert KubernetesResource.from_settings().kubeconfig is None  # in-cluster: nothing is missing


def test_a_run_that_needs_an_unset_value_fails_when_its_resource_is_set_up(clean_env):
    @dg.asset
    def needs_backups(backups: BackupStorageResource) -> None:
        raise AssertionError("must not run without its settings")

    result = dg.materialize(
        [needs_backups], resources={"backups": BackupStorageResource.from_settings()}, raise_on_error=False
    )
    assert not result.success
    assert "CQOX_S3_BUCKET is not set" in str(result.all_events)


def test_postgres_from_settings_picks_the_login(clean_env):
    for name, value in {
        "CQOX_PG_HOST": "db",
        "CQOX_PG_PORT": "6543",
        "CQOX_PG_DB": "cqox",
        "CQOX_PG_SSLROOTCERT": "/ca.crt",
        "CQOX_PG_USER": "admin",
        "CQOX_PG_PASSFILE": "/pgpass",
    }.items():
        clean_env.setenv(name, value)
    settings = Settings()
    vault = VaultResource(addr="https://vault:8200")
    admin = PostgresResource.from_settings(settings, vault=vault)
    assert (admin.user, admin.passfile, admin.vault, admin.unset_settings) == ("admin", "/pgpass", None, [])
    assert admin.describe() == "postgresql://admin@db:6543/cqox"
    clean_env.setenv("CQOX_PG_VAULT_ROLE", "cqox-platform")
    platform = PostgresResource.from_settings(Settings(), vault=vault)
    assert platform.uses_vault and platform.describe() == "postgresql://vault:cqox-platform@db:6543/cqox"
    assert not PostgresResource.from_settings(Settings()).uses_vault  # the admin never takes the Vault login


def test_definitions_load_with_no_environment():
    code = "import cqox_platform.definitions as d; print(sorted(d.defs.resources))"
    out = subprocess.run([sys.executable, "-c", code], env=NO_ENV, capture_output=True, text=True, check=True)
    assert "'postgres'" in out.stdout and "'s3'" in out.stdout


def test_the_vault_client_never_shows_credentials():
    from cqox_platform.secrets.vault_client import VaultClient

    client = VaultClient("https://vault:8200", role_id="role-abc", secret_id="secret-xyz")
    assert "secret-xyz" not in repr(client) and "role-abc" not in repr(client)


def test_core_clients_and_the_wal_archiver_import_no_dagster_and_no_settings():
    modules = [
        "cqox_platform.secrets.vault_client",
        "cqox_platform.metrics.prometheus",
        "cqox_platform.kube.client",
        "cqox_platform.db.client",
        "cqox_platform.backup.archive.archiver_settings",
        "cqox_platform.archiver_clients",
    ]
    heavy = "m.split('.')[0] in ('dagster', 'pydantic_settings') or m == 'cqox_platform.settings'"
    code = f"import sys; [__import__(m) for m in {modules!r}]; print(sorted(m for m in sys.modules if {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], env=NO_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_builds_core_clients_not_dagster_resources():
    code = (
        "import sys; from cqox_platform.cli import context; from cqox_platform.cli.app import main; "
        "import os; os.environ.update(CQOX_PG_HOST='h', CQOX_PG_PORT='1', CQOX_PG_DB='d', CQOX_PG_SSLROOTCERT='c', "
        "CQOX_PG_USER='u', CQOX_PG_PASSFILE='p', CQOX_PROMETHEUS_URL='http://p', CQOX_KUBECONFIG='k'); "
        "print(type(context.postgres()).__name__, type(context.prometheus()).__name__, "
        "type(context.kubernetes()).__name__); "
        "print(any(m.split('.')[0] == 'dagster' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=NO_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["PostgresClient PrometheusClient KubernetesClient", "False"]


def test_cli_command_modules_never_import_the_cli_package_back():
    """``cli/app`` assembles the groups; a command module importing it (or its ``main``) is the old cycle."""
    for module in CLI_DIR.glob("*.py"):
        if module.name in ("__init__.py", "__main__.py", "app.py", "entrypoint.py"):  # the assembly and its entry
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "cqox_platform.cli":
                assert {a.name for a in node.names} <= {"context", "group"}, f"{module.name} imports {node.names}"
            if isinstance(node, ast.ImportFrom):
                assert node.module != "cqox_platform.cli.app", f"{module.name} imports the assembled CLI back"
            if isinstance(node, ast.Import):
                assert "cqox_platform.cli" not in {a.name for a in node.names}, module.name


def test_the_cli_s3_client_reads_the_credentials_of_the_environment_it_is_built_in(clean_env, tmp_path):
    """A process that built a boto3 client under other settings (an in-process CLI call, a resource, a test of another
    stack) must not leave the next client with that environment's credentials file: boto3's default session caches
    the config files it read first, and the datasets tests failed with ``ProfileNotFound: cqox-local``."""
    import boto3

    from cqox_platform.cli import context

    credentials = tmp_path / "credentials"
    credentials.write_text("[cqox-local]\naws_access_key_id = AKIDLOCAL\naws_secret_access_key = local-secret\n")
    clean_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    clean_env.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.client("s3", region_name="us-east-1", endpoint_url="https://127.0.0.1:1")  # caches the absent file
    clean_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    clean_env.setenv("AWS_PROFILE", "cqox-local")
    clean_env.setenv("CQOX_S3_ENDPOINT", "https://127.0.0.1:1")
    context.settings.cache_clear()
    try:
        client = context.s3()
        assert client._request_signer._credentials.access_key == "AKIDLOCAL"
    finally:
        context.settings.cache_clear()
