"""A new Vault snapshot and its restore drill after every Transit key rotation, however the rotation happened.

Decided from the keys themselves, not from which job rotated them: the live versions of the platform's Transit
keys are compared with the versions recorded in the newest snapshot's metadata, so a rotation by
``dataset_key_rotation``, the CLI or an operator at the ``bao`` prompt all count. A snapshot that predates a
rotation cannot unwrap data keys made since, which is what makes this urgent. Run key = the live versions, so
each rotation is requested once; a failed run is caught by the hourly snapshot and the next rotation.
"""

import json

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.vault_recovery import platform_keys, vault_after_rotation_job
from cqox_platform.errors import CqoxError
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets import snapshots
from cqox_platform.secrets.vault_drill import key_versions


@dg.sensor(
    job=vault_after_rotation_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a Vault snapshot and its restore drill when the platform's Transit keys differ from the "
    "versions the newest snapshot recorded (a rotation since).",
)
def vault_rotation_sensor(
    context: dg.SensorEvaluationContext, vault: VaultResource, s3: S3Resource, backups: BackupStorageResource
) -> dg.RunRequest | dg.SkipReason:
    try:
        live = key_versions(vault.key_info, platform_keys(backups))
        newest = snapshots.newest(s3.get_client(), backups.bucket) if backups.bucket else None
    except CqoxError as exc:
        return dg.SkipReason(f"cannot compare key versions: {exc}")
    if newest is None:
        # A fresh installation: the hourly schedule (or the main job) takes the first snapshot once vault_config
        # and the first backup exist; a run requested now would only drill a Vault with nothing to prove.
        return dg.SkipReason("no Vault snapshot yet; vault_snapshot_schedule takes the first")
    if newest.key_versions == live:
        return dg.SkipReason(f"the newest snapshot {newest.where} holds the current key versions")
    reason = f"keys {newest.key_versions} -> {live}"
    context.log.info(f"requesting a Vault snapshot and drill: {reason}")
    return dg.RunRequest(
        run_key="keys-" + json.dumps(live, sort_keys=True, separators=(",", ":")),
        tags={"cqox/reason": reason[:200]},
    )


defs = dg.Definitions(sensors=[vault_rotation_sensor])
