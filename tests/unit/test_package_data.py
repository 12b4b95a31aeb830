"""Data files are package data: found with importlib.resources, declared for the wheel, byte for byte released.

The wheel itself is built and installed by tests/unit/test_wheel.py."""

from __future__ import annotations

import fnmatch
import hashlib
import tomllib
from pathlib import Path

import pytest
import yaml

import cqox_platform
from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.canary.policy import POLICY_DIR as CANARY_POLICY_DIR
from cqox_platform.deploy.dashboards import DASHBOARD_DIR
from cqox_platform.deploy.manifests import MANIFEST_DIR
from cqox_platform.package_data import package_path
from cqox_platform.schema.migrations import SQL_DIR
from cqox_platform.secrets.vault_setup import POLICY_DIR as VAULT_POLICY_DIR
from cqox_platform.slo.spec import DEFAULT_SPEC
from cqox_platform.stack.dagster_services import INSTANCE_CONFIG, WORKSPACE, prepare_dagster_home
from cqox_platform.stack.kube.build import CRDS_DIR

REPO = Path(__file__).resolve().parents[2]
SQL_PACKAGE = "cqox_platform.schema.sql"
PACKAGE = Path(cqox_platform.__file__).parent
#: Package data that lives next to the code reading it.
DATA = {
    "SLO spec": DEFAULT_SPEC,
    "canary policies": CANARY_POLICY_DIR,
    "manifests": MANIFEST_DIR,
    "Grafana dashboards": DASHBOARD_DIR,
    "Vault policies": VAULT_POLICY_DIR,
    "backup alert rules": BACKUP_ALERT_RULES,
    "stack CRDs": CRDS_DIR,
}
#: Package data whose source is at the top of the repository: what this (editable) install finds, and the source.
TOP_LEVEL = {
    "migrations": (SQL_DIR, REPO / "sql"),
    "stack instance config": (INSTANCE_CONFIG, REPO / "dagster.yaml"),
}

# Released migrations are never edited: the runner refuses a database whose recorded checksum differs. Wherever
# the files live and however they are packaged, not a byte changes; a new migration adds a line here.
RELEASED_MIGRATIONS = {
    "0001_extensions.sql": "cfc6b90bb6ed87ea14d598fd0e2042136c207288b3a7a67eedcdcd89a6875101",
    "0002_core_tables.sql": "ec0963ffc9357c714a7e96f72fc0b4935af58de8f93a4e18d1fa19fa303544e8",
    "0003_metrics.plain.sql": "df7858afc2a23a7e50f39bebf7aae4571c74b40c710546bc7e850955b83c74c8",
    "0003_metrics.timescaledb.sql": "b66e8c908cb5e71f8cb432ba2c5bb03053678e67e8350c395f379b879d4ac81f",
    "0004_rollups.plain.sql": "180879b905886d348ebe9b968b9b16a274150389715539a9a74c2acfd7278a53",
    "0004_rollups.timescaledb.sql": "b52d463188ab7208447468df0d7a0911b78a73b9ed23d48b4f5f0c709ca10c5d",
    "0005_dataset_encryption.plain.sql": "df4749a64c7fe083ac57614799933023fd9655559aeb1f46e9821e286238fe7b",
    "0005_dataset_encryption.timescaledb.sql": "f8cbe5f8ffb3d5052230f51fc205bb29a34457e7bd9c844d19984ae40761f2aa",
    "0006_slo_reports.plain.sql": "cac208472bfe0027f6f4d8b535a9ea0e8201f6e31b61604250df5e87776e1ce1",
    "0006_slo_reports.timescaledb.sql": "bb5de728d48f50d209237e36a1291084a9e09b66870ed26783c77801e66f11b6",
    "0007_backups.sql": "266c7f08f4031e532a86abced5062dcc1d0fd48272f6e2f9b42965db745ceb96",
    "0008_canary.sql": "065875b70b78d6a1b56e6d543546f58d063b24f3c8b72fc6a1ce7a9ef3735b80",
    "0009_canary_guard.sql": "dfc4add57d58728df3c75ab39e033f1cdba951b246a1798cd2c79315f73c0256",
    "0010_drill_status.sql": "f504e809f8801d41dd14dae68812776b8dc5bd57a3386e5cb7d983214eb30cc9",
    "0011_runtime_role.sql": "7c99541013304887b1f95d16f4fcce93f314efb4c8eb49dcc45570e42190bf69",
    "0012_canary_complete.sql": "1bc8f4c212dce2d8826bc7368f795eb218d8056c99ef3539796d7b5b97953087",
}


@pytest.mark.parametrize("what", sorted(DATA))
def test_data_is_inside_the_package(what: str) -> None:
    path = DATA[what]
    assert path.exists(), f"{what}: {path} is missing"
    assert path.is_relative_to(PACKAGE), f"{what}: {path} is outside the package"


@pytest.mark.parametrize("what", sorted(TOP_LEVEL))
def test_the_editable_install_reads_the_top_level_sources(what: str) -> None:
    """sql/ and dagster.yaml are edited at the top of the repository and used from there without reinstalling."""
    found, source = TOP_LEVEL[what]
    assert source.exists(), f"{what}: {source} is missing"
    assert found.resolve() == source.resolve(), f"{what}: the installed package reads {found}, not {source}"


def test_the_migrations_are_the_package_cqox_platform_schema_sql() -> None:
    assert package_path("cqox_platform.schema.sql") == SQL_DIR


def data_files() -> list[str]:
    return sorted(
        str(file.relative_to(PACKAGE))
        for path in DATA.values()
        for file in ([path] if path.is_file() else path.iterdir())
        if file.is_file()
    )


def test_every_data_file_is_declared_as_package_data() -> None:
    """A file not matched by ``[tool.setuptools.package-data]`` would be missing from a wheel."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    undeclared = [f for f in data_files() if not any(fnmatch.fnmatch(f, p) for p in patterns["cqox_platform"])]
    migrations = [f.name for f in SQL_DIR.iterdir() if f.is_file() and f.suffix != ".py"]
    undeclared += [
        f"sql/{name}" for name in migrations if not any(fnmatch.fnmatch(name, p) for p in patterns[SQL_PACKAGE])
    ]
    assert undeclared == []


def test_the_migrations_package_maps_to_the_top_level_sql_directory() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {SQL_PACKAGE: "sql"}


def test_released_migrations_are_byte_for_byte_unchanged() -> None:
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(SQL_DIR.glob("*.sql"))}
    assert {name: found.get(name) for name in RELEASED_MIGRATIONS} == RELEASED_MIGRATIONS


def test_the_stack_workspace_is_the_repositorys(tmp_path: Path) -> None:
    home = prepare_dagster_home(tmp_path)
    assert yaml.safe_load((home / "workspace.yaml").read_text()) == WORKSPACE
    assert yaml.safe_load((REPO / "workspace.yaml").read_text()) == WORKSPACE
    assert (home / "dagster.yaml").read_bytes() == INSTANCE_CONFIG.read_bytes()
