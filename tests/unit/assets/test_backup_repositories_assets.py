"""The per-repository assets: one set per configured repository, with the platform's own check names."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.backups.repositories import GROUP, repository_assets, repository_defs
from cqox_platform.backup.repository.base import RepositoryError
from cqox_platform.backup.repository.config import load_repositories

CONFIG = """
repositories:
  - name: cnpg-dr
    engine: barman-cloud
    destination: s3://cqox-backups-dr/postgres/
    server_name: cqox-postgres-cluster
    s3: {endpoint_url: "https://127.0.0.1:9000", ca_bundle: /ca.crt, credentials_file: /creds, profile: p}
    source: "host=/run/pg dbname=app"
    take_base_backups: true
  - name: legacy
    engine: pgbackrest
    config: /etc/pgbackrest/pgbackrest.conf
    stanza: main
    source: "host=/run/pg dbname=app"
"""


def _specs(tmp_path: Path, text: str = CONFIG):
    path = tmp_path / "repositories.yaml"
    path.write_text(text)
    return load_repositories(path)


def test_each_repository_gets_its_assets_and_the_platforms_check_names(tmp_path):
    defs = dg.Definitions.merge(
        repository_defs(_specs(tmp_path)),
        dg.Definitions(resources={"postgres_admin": dg.ResourceDefinition.none_resource()}),
    )
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()} - {"cqox_schema"}  # an upstream dependency
    assert keys == {
        "repository_cnpg_dr_base_backup",
        "repository_cnpg_dr_wal_status",
        "repository_cnpg_dr_restore_drill",
        "repository_legacy_wal_status",
        "repository_legacy_restore_drill",
    }
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    for name in ("cnpg_dr", "legacy"):
        assert {
            (f"repository_{name}_wal_status", "wal_rpo_within_target"),
            (f"repository_{name}_wal_status", "wal_archive_continuous"),
            (f"repository_{name}_wal_status", "wal_archiver_healthy"),
            (f"repository_{name}_restore_drill", "drill_passed"),
            (f"repository_{name}_restore_drill", "latest_backup_verified_restorable"),
        } <= checks
    assert all(graph.get(dg.AssetKey(k)).group_name == GROUP for k in keys)


def test_without_a_repositories_file_there_are_none():
    assert not repository_defs([]).assets


@pytest.mark.parametrize(
    "text",
    [
        "repositories:\n  - {name: cqox, engine: pgbackrest, config: /c, stanza: s, source: x}\n",
        "repositories:\n  - {name: Bad_Name, engine: pgbackrest, config: /c, stanza: s, source: x}\n",
        "repositories:\n  - {name: r, engine: wal-g, source: x}\n",
        "repositories:\n  - {name: r, engine: pgbackrest, config: /c, stanza: s, source: x, extra: 1}\n",
    ],
)
def test_a_bad_repositories_file_is_refused_naming_it(tmp_path, text):
    with pytest.raises(RepositoryError, match="repositories"):
        _specs(tmp_path, text)


def test_a_barman_repository_without_its_s3_settings_fails_when_built(tmp_path):
    (spec,) = _specs(tmp_path, "repositories:\n  - {name: r, engine: barman-cloud, source: x}\n")
    with pytest.raises(RepositoryError, match="destination, server_name and s3"):
        spec.build()


def test_the_assets_load_with_the_code_locations_resources(tmp_path):
    assets = repository_assets(_specs(tmp_path)[0])
    defs = dg.Definitions(assets=assets, resources={"postgres_admin": dg.ResourceDefinition.none_resource()})
    dg.Definitions.validate_loadable(defs)  # raises on a resource an asset requires and nobody provides
    assert {key for a in assets for key in a.keys} <= set(defs.resolve_all_asset_keys())
