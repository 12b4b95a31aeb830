"""Vault snapshots and their restore drill on the real stack: a snapshot restored into a scratch OpenBao unwraps the
data keys of a real base backup, WAL segment and dataset; a snapshot corrupted in S3 is refused, naming it; the
snapshot identity can read snapshots and nothing else; the unseal check fails without a mode."""

from __future__ import annotations

import io
import os
import time
import uuid
from unittest import mock

import dagster as dg
import hvac
import hvac.exceptions
import pytest

from assets import backups as backup_assets
from assets import vault_recovery
from cqox_platform.crypto.envelope import MANIFEST_SUFFIX, encrypt_to
from cqox_platform.datasets.store import DATASETS
from cqox_platform.resources.vault import VaultResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.secrets import snapshots
from cqox_platform.secrets.vault_setup import DATASET_PATH_KEY, DATASETS_KEY
from tests.helpers import (
    asset_metadata,
    backup_resources,
    check_results,
    dr_s3_client,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
    s3_client,
    table_rows,
    vault_platform,
)


def _snapshot_reader(env: dict[str, str]) -> VaultResource:
    return VaultResource(
        addr=env["VAULT_ADDR"], cacert=env["VAULT_CACERT"], approle_file=env["CQOX_VAULT_SNAPSHOT_APPROLE_FILE"]
    )


def _resources(stack, env: dict[str, str]) -> dict:
    return {
        "vault_snapshot_reader": _snapshot_reader(env),
        "vault": vault_platform(stack),
        "s3": backup_resources(stack, env)["s3"],
        "backups": backup_resources(stack, env)["backups"],
    }


def _wal_manifests(env: dict[str, str]) -> list[str]:
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=env["CQOX_S3_BUCKET"], Prefix="postgres/")
    return [
        o["Key"]
        for p in pages
        for o in p.get("Contents", [])
        if "/wal/" in o["Key"] and o["Key"].endswith(MANIFEST_SUFFIX)
    ]


@pytest.fixture(scope="module")
def env(stack):
    """vault_config (which makes the snapshot identity), a base backup with its WAL, and one encrypted dataset."""
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        env = stack.env()
        assert materialize_backups(stack, env, [backup_assets.postgres_basebackup]).success
        deadline = time.monotonic() + 120
        while not _wal_manifests(env):
            assert time.monotonic() < deadline, "no WAL segment was archived within 120 s of the base backup"
            time.sleep(1)
        # A dataset as the platform stores one in S3 (an envelope under the datasets' key, its manifest written
        # last); the drill reads only the bucket, so no database row is needed.
        object_key = f"{DATASETS}{uuid.uuid4()}/data.parquet.enc"
        encrypted = io.BytesIO()
        manifest = encrypt_to(
            io.BytesIO(b"a dataset"), encrypted, vault_platform(stack).key_provider(DATASETS_KEY), object_id=object_key
        )
        client = s3_client(env)
        client.put_object(Bucket=env["CQOX_S3_BUCKET"], Key=object_key, Body=encrypted.getvalue())
        client.put_object(Bucket=env["CQOX_S3_BUCKET"], Key=object_key + MANIFEST_SUFFIX, Body=manifest.to_json())
        yield env
        # It has no database row: leave nothing behind for other modules on this stack.
        for key in (object_key, object_key + MANIFEST_SUFFIX):
            client.delete_object(Bucket=env["CQOX_S3_BUCKET"], Key=key)


def _run(stack, env, assets, config: dict | None = None, selection=None) -> dg.ExecuteInProcessResult:
    with mock.patch.dict(os.environ, env):
        return dg.materialize(
            assets,
            resources=_resources(stack, env),
            run_config={"ops": config or {}},
            selection=selection,
            raise_on_error=False,
        )


def test_a_snapshot_restores_into_a_scratch_openbao_that_unwraps_real_data_keys(stack, env):
    result = _run(stack, env, [vault_recovery.vault_snapshot, vault_recovery.vault_restore_drill])
    assert result.success
    snap = asset_metadata(result, "vault_snapshot")
    # Each copy in its own region, read with that region's key.
    for where, client in ((snap["primary"], s3_client(env)), (snap["dr"], dr_s3_client(env))):
        bucket, key = where.removeprefix("s3://").split("/", 1)
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"][snapshots.SHA_META] == snap["sha256"]
        assert int(head["Metadata"][snapshots.SIZE_META]) == snap["size_bytes"] == head["ContentLength"]
    drill = asset_metadata(result, "vault_restore_drill")
    assert drill["status"] == "passed", drill.get("error")
    assert check_results(result)["vault_restore_verified"]
    assert drill["snapshot"] == snap["primary"]
    unwrapped = {row["kind"]: row["unwrapped"] for row in table_rows(drill["data_keys"])}
    assert unwrapped == {"base backup": True, "WAL segment": True, "dataset": True}
    keys = table_rows(drill["transit_keys"])
    assert {row["key"] for row in keys} == {DATASETS_KEY, env.get("CQOX_BACKUP_TRANSIT_KEY", "cqox-backups")}
    assert all(row["ok"] for row in keys)
    assert drill["vault_restore_seconds"] > 0
    print(
        f"\nMEASURED snapshot {snap['size_bytes']} bytes in {snap['snapshot_seconds']} s, uploaded to both buckets "
        f"in {snap['upload_seconds']} s; Vault restore {drill['vault_restore_seconds']} s "
        f"{ {r['phase']: r['seconds'] for r in table_rows(drill['restore_phases'])} }"
    )


def test_a_snapshot_corrupted_in_s3_is_refused_naming_the_object(stack, env):
    result = _run(stack, env, [vault_recovery.vault_snapshot])
    assert result.success
    where = asset_metadata(result, "vault_snapshot")["primary"]
    bucket, key = where.removeprefix("s3://").split("/", 1)
    client = s3_client(env)
    good = client.get_object(Bucket=bucket, Key=key)
    body, metadata = bytearray(good["Body"].read()), good["Metadata"]
    body[len(body) // 2] ^= 0x01  # one flipped bit, same size, same recorded metadata
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=metadata)
    drill = _run(stack, env, [vault_recovery.vault_restore_drill])
    assert drill.success  # the drill reports; its check fails closed
    assert not check_results(drill)["vault_restore_verified"]
    meta = asset_metadata(drill, "vault_restore_drill")
    assert meta["status"] == "failed"
    assert where in meta["error"] and "corrupt" in meta["error"], meta["error"]
    assert meta["vault_restore_seconds"] == -1.0  # refused before any restore
    # Leave a good newest snapshot for whoever runs next.
    assert _run(stack, env, [vault_recovery.vault_snapshot]).success


def test_the_snapshot_identity_reads_snapshots_and_nothing_else(stack, env):
    reader = _snapshot_reader(env).client()
    response = reader.sys.take_raft_snapshot()
    assert response.status_code == 200 and next(response.iter_content(2)) == b"\x1f\x8b"
    response.close()
    attempts = {
        "read a Transit key": lambda: reader.secrets.transit.read_key(name=DATASETS_KEY),
        "make a data key": lambda: reader.secrets.transit.generate_data_key(name=DATASETS_KEY, key_type="plaintext"),
        "read a KV secret": lambda: reader.secrets.kv.v2.read_secret_version(
            path=DATASET_PATH_KEY, mount_point="secret", raise_on_deleted_version=True
        ),
        "restore a snapshot": lambda: reader.sys.restore_raft_snapshot(b"\x1f\x8b"),
        "list policies": lambda: reader.sys.list_policies(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
            pytest.fail(f"the snapshot identity could {what}")
    assert isinstance(reader, hvac.Client)


def test_the_unseal_check_says_the_mode_and_fails_when_none_is_configured(stack, env):
    selection = dg.AssetSelection.checks(vault_recovery.vault_unseal_material)
    assets = [vault_recovery.vault_snapshot, vault_recovery.vault_unseal_material]
    configured = _run(stack, env, assets, selection=selection)
    (evaluation,) = configured.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["mode"].value == "key_file"
    unset = {k: v for k, v in env.items() if k != "CQOX_VAULT_UNSEAL_MODE"}
    with mock.patch.dict(os.environ, {}, clear=False):
        os.environ.pop("CQOX_VAULT_UNSEAL_MODE", None)
        none = _run(stack, unset, assets, selection=selection)
    (evaluation,) = none.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "CQOX_VAULT_UNSEAL_MODE" in evaluation.description


def test_a_key_rotation_sets_off_a_snapshot_and_a_drill_that_holds_the_new_version(stack, env):
    from sensors.vault_recovery_sensor import vault_rotation_sensor

    assert vault_rotation_sensor.job_name == vault_recovery.vault_after_rotation_job.name
    assert _run(stack, env, [vault_recovery.vault_snapshot]).success
    resources = {k: v for k, v in _resources(stack, env).items() if k in ("vault", "s3", "backups")}
    with mock.patch.dict(os.environ, env), dg.instance_for_test() as instance:
        quiet = vault_rotation_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(quiet, dg.SkipReason), quiet
        new_version = vault_platform(stack).rotate(DATASETS_KEY)
        request = vault_rotation_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(request, dg.RunRequest), request
    assert f'"{DATASETS_KEY}":{{"latest_version":{new_version},' in request.run_key
    # What the requested job runs: a snapshot holding the new version, then its drill.
    result = _run(stack, env, [vault_recovery.vault_snapshot, vault_recovery.vault_restore_drill])
    drill = asset_metadata(result, "vault_restore_drill")
    assert drill["status"] == "passed", drill.get("error")
    (row,) = [r for r in table_rows(drill["transit_keys"]) if r["key"] == DATASETS_KEY]
    assert f"'latest_version': {new_version}" in row["restored"] and row["ok"]
