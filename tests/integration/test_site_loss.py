"""The site-loss drill on the real stack: Vault and the database recovered from the DR region's copy with its
read-only key and the unseal key file alone, in a process that holds nothing of the running site; that key is
refused by the primary's S3 server; a DR copy without a Vault snapshot fails the drill, naming what is missing."""

from __future__ import annotations

import os
import time
from unittest import mock

import dagster as dg
import pytest
from botocore.exceptions import ClientError

from assets import backups as backup_assets
from assets import site_loss, vault_recovery
from cqox_platform.archiver_clients import read_key_pair, s3_client
from cqox_platform.backup.archive.cluster import cluster_archive
from cqox_platform.backup.verify.plan import ensure_point_archived
from cqox_platform.backup.verify.proof import load_restore_point
from cqox_platform.schema import MigrationRunner
from cqox_platform.secrets import snapshots
from tests.helpers import (
    asset_metadata,
    backup_resources,
    check_results,
    dr_s3_client,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
    table_rows,
    vault_platform,
)
from tests.helpers import (
    s3_client as primary_s3_client,
)


def _resources(stack, env: dict[str, str]) -> dict:
    return {
        **backup_resources(stack, env),
        "vault_snapshot_reader": vault_recovery_reader(env),
        "vault": vault_platform(stack),
    }


def vault_recovery_reader(env: dict[str, str]):
    from cqox_platform.resources.vault import VaultResource

    return VaultResource(
        addr=env["VAULT_ADDR"], cacert=env["VAULT_CACERT"], approle_file=env["CQOX_VAULT_SNAPSHOT_APPROLE_FILE"]
    )


def _run(stack, env, assets: list, config: dict | None = None) -> dg.ExecuteInProcessResult:
    with mock.patch.dict(os.environ, env):
        return dg.materialize(
            assets, resources=_resources(stack, env), run_config={"ops": config or {}}, raise_on_error=False
        )


@pytest.fixture(scope="module")
def env(stack):
    """A base backup whose restore point's segment is archived, writes after it, the DR copy, a Vault snapshot."""
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        env = stack.env()
        assert materialize_backups(stack, env, [backup_assets.postgres_basebackup]).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS site_loss_probe (id bigint PRIMARY KEY, note text)")
            conn.execute("INSERT INTO site_loss_probe SELECT g, 'after the backup' FROM generate_series(1, 500) g")
            (name,) = conn.execute("SELECT name FROM restore_points ORDER BY created_at DESC LIMIT 1").fetchone()
            point = load_restore_point(conn, name)
            archive = cluster_archive(conn, primary_s3_client(env), env["CQOX_S3_BUCKET"])
            ensure_point_archived(conn, archive, point)
            # Writes after the point, archived too: recovery must go on past the point to the end of the DR copy.
            conn.execute("INSERT INTO site_loss_probe SELECT g, 'after the point' FROM generate_series(501, 900) g")
            conn.execute("SELECT pg_switch_wal()")
            time.sleep(2)
        copied = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
        assert check_results(copied) == {"dr_copy_verified": True}, asset_metadata(copied, "backups_dr_copy")
        assert _run(stack, env, [vault_recovery.vault_snapshot]).success
        yield env


def test_the_site_is_recovered_from_the_dr_copy_alone_and_its_key_cannot_read_the_primary(stack, env):
    result = _run(stack, env, [site_loss.site_loss_drill])
    assert result.success
    meta = asset_metadata(result, "site_loss_drill")
    assert meta["status"] == "passed", meta.get("error")
    assert check_results(result) == {"site_recovered_from_dr_copy": True}
    assert meta["vault_snapshot"].startswith(f"s3://{env['CQOX_S3_DR_BUCKET']}/")
    assert meta["tables_checked"] > 0 and meta["rows_checked"] > 0 and meta["indexes_checked"] > 0
    # Recovery went past the point to the end of the DR copy's WAL, and the loss is measured against the primary.
    assert meta["wal_bytes_replayed"] > 0 and meta["rpo_seconds"] >= 0 and meta["rpo_bytes"] >= 0
    phases = {row["phase"]: row for row in table_rows(meta["phases"])}
    assert set(phases) == {"vault", "download", "decrypt", "extract", "verify", "replay", "checks"}
    assert phases["vault"]["seconds"] > 0 and phases["replay"]["seconds"] > 0
    assert meta["projected_rto_seconds"] > meta["rto_seconds"] > 0
    # The drill's key, refused by the primary's S3 server (inside the isolated recovery, and here again).
    assert meta["primary_read_with_drill_key"].startswith("refused"), meta["primary_read_with_drill_key"]
    access, secret = read_key_pair(env["CQOX_S3_DR_READER_CREDENTIALS_FILE"])
    drill_key_on_primary = s3_client(env["CQOX_S3_ENDPOINT"], env.get("AWS_CA_BUNDLE"), access, secret)
    with pytest.raises(ClientError) as refused:
        drill_key_on_primary.get_object(Bucket=env["CQOX_S3_BUCKET"], Key=meta["vault_snapshot"].split("/", 3)[3])
    assert refused.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}


def test_the_recovery_refuses_an_environment_that_reaches_the_running_site(stack, env, tmp_path):
    from cqox_platform.site_loss.recovery import main

    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    # A plan that is not one is refused before anything else runs.
    assert main([str(plan), str(tmp_path / "out.json")]) == 2
    with mock.patch.dict(os.environ, env):
        from cqox_platform.site_loss.isolation import NotIsolatedError, require_isolated

        with pytest.raises(NotIsolatedError, match="CQOX_S3_ENDPOINT") as refused:
            require_isolated()
    assert env["CQOX_S3_ENDPOINT"] not in str(refused.value)  # names, never values


def test_a_dr_copy_without_a_vault_snapshot_fails_the_drill_naming_what_is_missing(stack, env):
    writer = dr_s3_client(env, "writer")
    bucket = env["CQOX_S3_DR_BUCKET"]
    kept = snapshots.list_snapshots(writer, bucket)
    saved = [(s.key, writer.get_object(Bucket=bucket, Key=s.key)) for s in kept]
    bodies = [(key, obj["Body"].read(), obj.get("Metadata", {})) for key, obj in saved]
    snapshots.delete(writer, kept)
    try:
        result = _run(stack, env, [site_loss.site_loss_drill])
        meta = asset_metadata(result, "site_loss_drill")
        assert meta["status"] == "failed"
        assert check_results(result) == {"site_recovered_from_dr_copy": False}
        assert f"s3://{bucket}/{snapshots.PREFIX} holds no Vault snapshot" in meta["error"]
        assert meta["rto_seconds"] == -1.0
    finally:
        for key, body, metadata in bodies:
            writer.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)


def test_the_drill_is_refused_on_production(stack, env):
    with mock.patch.dict(os.environ, {**env, "CQOX_ENVIRONMENT": "production"}):
        result = dg.materialize([site_loss.site_loss_drill], resources=_resources(stack, env), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "refused where CQOX_ENVIRONMENT=production" in str(failure.event_specific_data.error.message)


def test_the_replay_timeout_of_the_config_reaches_the_isolated_recovery(stack, env):
    config = {"site_loss_drill": {"config": {"replay_timeout": 0.01}}}
    result = _run(stack, env, [site_loss.site_loss_drill], config)
    meta = asset_metadata(result, "site_loss_drill")
    assert meta["status"] == "failed"
    assert "recovery did not pause within 0 s" in meta["error"], meta["error"]
