"""Vault recovery as assets (group ``vault_recovery``): raft snapshots in both buckets, and a drill that restores
the newest into a scratch OpenBao and proves it still unwraps the platform's data keys.

Every base backup, WAL segment and dataset is wrapped by Transit keys that never leave Vault: without a Vault
snapshot and the unseal material, a lost Vault makes both buckets unreadable. ``vault_snapshot`` runs hourly
(the RPO target) and after every key rotation (``sensors/vault_recovery_sensor.py``); ``vault_restore_drill``
runs weekly and after every rotation. The core is ``cqox_platform.secrets.snapshots`` (store, verify, expire),
``scratch_vault`` (the reusable restore) and ``vault_drill`` (what the restored Vault must prove).
"""

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import hvac.exceptions
import requests
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.s3 import S3Resource

from assets.metadata import column, numeric_history, table
from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.errors import CqoxError
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.secrets import snapshots
from cqox_platform.secrets.scratch_vault import restored_vault
from cqox_platform.secrets.unseal import UnsealMaterial, unseal_keys, unseal_verdict
from cqox_platform.secrets.vault_drill import key_versions, newest_manifests, prove
from cqox_platform.secrets.vault_setup import DATASETS_KEY
from cqox_platform.settings import get_settings

GROUP = "vault_recovery"
SNAPSHOT_CRON = "7 * * * *"
DRILL_CRON = "30 5 * * 0"
#: The newest snapshot may be one hourly period old plus a quarter of an hour of slack (a late or slow run);
#: older, and a site loss would cost more Vault changes than the RPO target allows.
SNAPSHOT_TARGET_SECONDS = RPO_TARGET_SECONDS + 15 * 60
SNAPSHOT_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(seconds=SNAPSHOT_TARGET_SECONDS), warn_window=timedelta(seconds=RPO_TARGET_SECONDS)
)
#: Weekly, plus a day of slack.
DRILL_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=2))
HISTORY = 30


def platform_keys(backups: BackupStorageResource) -> list[str]:
    """The Transit keys the platform's data depends on: the backups' (settings) and the datasets'."""
    return sorted({backups.transit_key, DATASETS_KEY})


def _live_versions(vault: VaultResource, names: list[str]) -> dict[str, dict[str, int]]:
    return key_versions(vault.key_info, names)


@dg.asset(
    group_name=GROUP,
    kinds={"vault", "s3"},
    deps=[dg.AssetKey("vault_config")],
    freshness_policy=SNAPSHOT_FRESHNESS,
    description="Takes a raft snapshot of Vault through its API with an identity that may do nothing else, "
    "streams it to the primary and the DR bucket with its SHA-256 and size in the metadata (read back and "
    "checked), and expires old snapshots (CQOX_VAULT_SNAPSHOT_KEEP / _MAX_AGE_DAYS).",
)
def vault_snapshot(
    context: dg.AssetExecutionContext,
    vault_snapshot_reader: VaultResource,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    backups.require_settings()
    settings = get_settings()
    names = platform_keys(backups)
    before = _live_versions(vault, names)
    client = vault_snapshot_reader.client()
    with tempfile.TemporaryDirectory(prefix="cqox-vault-snapshot-", dir=backups.drill_parent()) as tmp:
        # Timed from the request: hvac reads the whole body before take_snapshot sees it.
        requested = time.monotonic()
        response = vault_snapshot_reader.call("taking a raft snapshot", client.sys.take_raft_snapshot)
        local = snapshots.take_snapshot(response, Path(tmp))
        snapshot_seconds = time.monotonic() - requested
        after = _live_versions(vault, names)
        if after != before:
            raise dg.Failure(
                f"a Transit key changed while the snapshot was taken ({before} -> {after}); it is not stored. "
                "The rotation sensor requests a new snapshot; or materialize vault_snapshot again."
            )
        key = snapshots.object_key(local.taken_at)
        metadata = snapshots.snapshot_metadata(local, after)
        copies = _copies(s3, backups, "writer")
        started = time.monotonic()
        stored = [snapshots.upload(client, bucket, key, local, metadata) for bucket, client in copies]
        upload_seconds = time.monotonic() - started
    context.log.info(
        f"Vault snapshot of {local.size} bytes (SHA-256 {local.sha256}) taken in {snapshot_seconds:.2f} s, stored and "
        f"verified in {', '.join(s.where for s in stored)} in {upload_seconds:.2f} s"
    )
    now = datetime.now(UTC)
    max_age = timedelta(days=settings.vault_snapshot_max_age_days)
    deleted: list[str] = []
    for bucket, client in copies:
        gone = snapshots.expired(snapshots.list_snapshots(client, bucket), settings.vault_snapshot_keep, max_age, now)
        snapshots.delete(client, gone)
        deleted += [s.where for s in gone]
    if deleted:
        context.log.info(f"retention deleted {len(deleted)} snapshot(s): {deleted}")
    return dg.MaterializeResult(
        metadata={
            "primary": stored[0].where,
            "dr": stored[1].where,
            "sha256": local.sha256,
            "size_bytes": local.size,
            "snapshot_seconds": round(snapshot_seconds, 3),
            "upload_seconds": round(upload_seconds, 3),
            "taken_at": local.taken_at.isoformat(),
            "transit_keys": dg.MetadataValue.json(after),
            "retention": f"newest {settings.vault_snapshot_keep}, and all younger than {max_age.days} days",
            "deleted": dg.MetadataValue.json(deleted),
        }
    )


@dg.asset_check(
    asset=vault_snapshot,
    description="The newest Vault snapshot in the primary and in the DR bucket is younger than one hourly period "
    "plus 15 minutes; fails when either bucket has none.",
)
def vault_snapshot_fresh(s3: S3Resource, backups: BackupStorageResource) -> dg.AssetCheckResult:
    backups.require_settings()
    newest = {bucket: snapshots.newest(client, bucket) for bucket, client in _copies(s3, backups, "reader")}
    verdict = snapshots.freshness(newest, SNAPSHOT_TARGET_SECONDS, datetime.now(UTC))
    return dg.AssetCheckResult(
        passed=verdict.passed,
        description=verdict.description,
        metadata={
            "target_seconds": SNAPSHOT_TARGET_SECONDS,
            "age_seconds": round(verdict.age_seconds, 1) if verdict.age_seconds is not None else -1.0,
            "newest": dg.MetadataValue.json({b: s.where if s else None for b, s in newest.items()}),
        },
    )


@dg.asset_check(
    asset=vault_snapshot,
    description="Says how a restored Vault gets unsealed (Shamir holders, Transit or KMS auto-unseal, or the local "
    "stack's key file) and fails when no mode, or an incomplete one, is configured: a snapshot without its unseal "
    "material restores nothing.",
)
def vault_unseal_material() -> dg.AssetCheckResult:
    verdict = unseal_verdict(UnsealMaterial.from_settings(get_settings()))
    return dg.AssetCheckResult(
        passed=verdict.passed,
        description=verdict.description,
        metadata={"mode": verdict.mode, **{k: dg.MetadataValue.json(v) for k, v in verdict.metadata.items()}},
    )


def _copies(
    s3: S3Resource, backups: BackupStorageResource, dr_role: Literal["writer", "reader"]
) -> list[tuple[str, Any]]:
    """(bucket, client) of the primary and of the DR copy; the DR region is reached with its own key only:
    the writer's to store and expire snapshots, the read-only reader's to check and restore them."""
    return [(backups.bucket, s3.get_client()), (backups.dr_bucket, backups.dr_client(dr_role))]


class VaultDrillConfig(dg.Config):
    #: "primary" or "dr": which bucket's newest snapshot is restored.
    source: str = "primary"
    keep_scratch: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"vault", "s3"},
    deps=[vault_snapshot, dg.AssetKey("postgres_basebackup"), dg.AssetKey("wal_archive_status")],
    freshness_policy=DRILL_FRESHNESS,
    description="Restores the newest Vault snapshot (SHA-256 checked first) into a scratch OpenBao, unseals it with "
    "the escrowed material, proves every platform Transit key is there at the same versions and unwraps the data "
    "keys of the newest base backup, WAL segment and dataset; records how long the Vault restore took.",
    check_specs=[
        dg.AssetCheckSpec(
            "vault_restore_verified",
            asset="vault_restore_drill",
            description="The newest snapshot restored, unsealed with the escrow, holds every Transit key at the "
            "current versions and unwraps real data keys. Fails closed: no snapshot, a stale or corrupt one, or "
            "any mismatch fails with its reason.",
        )
    ],
)
def vault_restore_drill(
    context: dg.AssetExecutionContext,
    config: VaultDrillConfig,
    vault: VaultResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    backups.require_settings()
    if config.source not in ("primary", "dr"):
        raise dg.Failure(f"source {config.source!r} is neither primary nor dr.")
    bucket, client = _copies(s3, backups, "reader")[1 if config.source == "dr" else 0]
    settings = get_settings()
    problems: list[str] = []
    outcome: dict = {"source": f"s3://{bucket}/{snapshots.PREFIX}"}
    try:
        newest = snapshots.newest(client, bucket)
        if newest is None:
            raise CqoxError(f"s3://{bucket}/{snapshots.PREFIX} holds no Vault snapshot; materialize vault_snapshot.")
        outcome.update(snapshot=newest.where, snapshot_age_seconds=round(newest.age_seconds(datetime.now(UTC)), 1))
        if newest.age_seconds(datetime.now(UTC)) > SNAPSHOT_TARGET_SECONDS:
            problems.append(f"the newest snapshot {newest.where} is older than {SNAPSHOT_TARGET_SECONDS / 60:.0f} min")
        material = UnsealMaterial.from_settings(settings)
        if material.mode != "key_file":
            raise CqoxError(
                f"unseal mode {material.mode or 'none'}: this drill unseals with a key file only (the local stack); "
                "a Shamir installation runs it with its holders, an auto-unseal one with its seal configured."
            )
        keys = unseal_keys(material.key_file)
        names = platform_keys(backups)
        live = _live_versions(vault, names)
        recorded = newest.key_versions
        if recorded != live:
            problems.append(
                f"the Transit keys changed since {newest.where} was taken (then {recorded}, now {live}); "
                "materialize vault_snapshot"
            )
        samples = newest_manifests(client, bucket)  # the same copy the snapshot came from
        with snapshots.downloaded(client, newest, backups.drill_parent()) as (path, _verified):
            context.log.info(f"{newest.where}: SHA-256 and size match what was recorded at upload")
            with restored_vault(
                path, keys, backups.drill_parent(), progress=context.log.info, keep=config.keep_scratch
            ) as restored:
                proof = prove(restored.client, recorded or live, samples)
                outcome["restore_seconds"] = restored.seconds
        problems += proof.problems
        outcome.update(keys=proof.keys, samples=proof.samples)
    except (
        CqoxError,
        hvac.exceptions.VaultError,
        requests.exceptions.RequestException,
        BotoCoreError,
        ClientError,
        OSError,
    ) as exc:
        # Fail closed with the reason; the check carries it (a Vault or S3 error names its object).
        problems.append(str(exc) if isinstance(exc, CqoxError) else f"{type(exc).__name__}: {exc}")
    passed = not problems
    if passed:
        context.log.info(f"Vault restore drill passed: restored in {outcome['restore_seconds']['total']:.1f} s")
    else:
        context.log.error(f"Vault restore drill FAILED: {'; '.join(problems)}")
    metadata = _drill_metadata(context, outcome, problems)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="vault_restore_verified",
                passed=passed,
                description="; ".join(problems)
                if problems
                else f"{outcome['snapshot']} restored, unsealed with the escrow, every key and data key proven",
                metadata={"error": "; ".join(problems)} if problems else {},
            )
        ],
    )


def _drill_metadata(context: dg.AssetExecutionContext, outcome: dict, problems: list[str]) -> dict:
    seconds = outcome.get("restore_seconds") or {}
    total = seconds.get("total")
    earlier = numeric_history(context, vault_restore_drill.key, ["vault_restore_seconds"], HISTORY - 1)
    history = [*earlier["vault_restore_seconds"], total]
    chart = render_lines_svg(f"Vault restore drills: seconds (last {HISTORY})", {"Vault restore": history}, "s")
    metadata: dict = {
        "status": "passed" if not problems else "failed",
        **({"error": "; ".join(problems)} if problems else {}),
        "source": outcome["source"],
        "snapshot": outcome.get("snapshot", ""),
        "snapshot_age_seconds": float(outcome.get("snapshot_age_seconds", -1.0)),
        # -1: the restore did not get that far.
        "vault_restore_seconds": float(total) if total is not None else -1.0,
        "restore_phases": table(
            [column("phase"), column("seconds", "float", "wall-clock time of the phase")],
            [[phase, float(value)] for phase, value in seconds.items()],
        ),
        "transit_keys": table(
            [column("key"), column("expected"), column("restored"), column("ok", "bool")],
            [[k["key"], str(k["expected"]), str(k["restored"]), k["ok"]] for k in outcome.get("keys", [])],
        ),
        "data_keys": table(
            [column("kind"), column("object"), column("key version"), column("unwrapped", "bool")],
            [[s["kind"], s["object"], s["key"], s["unwrapped"]] for s in outcome.get("samples", [])],
        ),
        "history": dg.MetadataValue.md(svg_markdown(chart, "Vault restore history")),
    }
    return metadata


vault_snapshot_job = dg.define_asset_job(
    "vault_snapshot_job", selection=[vault_snapshot], description="One Vault raft snapshot into both buckets."
)
vault_restore_drill_job = dg.define_asset_job(
    "vault_restore_drill_job",
    selection=[vault_restore_drill],
    description="Restore the newest Vault snapshot into a scratch OpenBao and prove it.",
)
#: What a key rotation sets off: a snapshot that holds the new key version, then its drill.
vault_after_rotation_job = dg.define_asset_job(
    "vault_after_rotation_job",
    selection=[vault_snapshot, vault_restore_drill],
    description="After a Transit key rotation: a new Vault snapshot, then a restore drill of it.",
)
vault_snapshot_schedule = dg.ScheduleDefinition(
    job=vault_snapshot_job,
    cron_schedule=SNAPSHOT_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly (the RPO target): a Vault raft snapshot into the primary and the DR bucket.",
)
vault_restore_drill_schedule = dg.ScheduleDefinition(
    job=vault_restore_drill_job,
    cron_schedule=DRILL_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly: restore the newest Vault snapshot into a scratch OpenBao and prove it.",
)

defs = dg.Definitions(
    assets=[vault_snapshot, vault_restore_drill],
    asset_checks=[vault_snapshot_fresh, vault_unseal_material],
    jobs=[vault_snapshot_job, vault_restore_drill_job, vault_after_rotation_job],
    schedules=[vault_snapshot_schedule, vault_restore_drill_schedule],
)
