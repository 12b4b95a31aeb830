"""``site_loss_drill`` (group ``vault_recovery``): the whole platform recovered from the DR copy and the escrowed
unseal material alone, weekly, with its RTO per phase, the RPO it achieved and a projection to 1 TiB.

Every other drill may lean on the running site: the running OpenBao unwraps data keys, the primary bucket holds
the WAL. A lost site offers neither. So the recovery (``cqox_platform.site_loss.recovery``) runs as a process
of its own whose environment holds nothing of the running site (``site_loss.isolation``; it refuses otherwise),
given a plan file that names only the DR region, its read-only key file and the unseal key file. Before it
starts, this asset (the observer, which may still see the primary) notes the primary's position and picks the
restore point to prove; afterwards it records the result, its history and a chart. Refused where
``CQOX_ENVIRONMENT`` is ``production``, like ``alert_drill``: it would run a second OpenBao holding production's
keys on the run's machine.
"""

import json
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.metadata import column, numeric_history, table
from assets.vault_recovery import vault_snapshot
from cqox_platform.backup.archive.archiver_settings import ARCHIVER_APPROLE
from cqox_platform.backup.archive.cluster import system_id
from cqox_platform.backup.archive.store import Archive
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.fsutil import write_file
from cqox_platform.installation import platform_cli
from cqox_platform.resources.backups import BackupStorageResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.secrets.unseal import UnsealMaterial
from cqox_platform.settings import get_settings
from cqox_platform.site_loss.isolation import isolated_env
from cqox_platform.site_loss.observe import newest_point_in_copy, primary_position
from cqox_platform.site_loss.plan import SiteLossPlan
from cqox_platform.site_loss.recovery import ROADMAP_RTO_SECONDS, SiteLossResult

GROUP = "vault_recovery"
DRILL_CRON = "0 6 * * 0"
#: Weekly, plus a day of slack.
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=2))
HISTORY = 30
#: The RPO target the drill's achieved RPO is held to (the roadmap's: under an hour).
RPO_TARGET_SECONDS = 3600


class SiteLossDrillConfig(dg.Config):
    keep_scratch: bool = False
    #: Seconds recovery may take to reach the point, and again to the end of the DR copy's WAL.
    replay_timeout: float = 3600


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "vault", "s3"},
    deps=[vault_snapshot, dg.AssetKey("backups_dr_copy")],
    freshness_policy=FRESHNESS,
    description="Site-loss drill: from nothing but the DR copy (its read-only key) and the escrowed unseal key, "
    "restores the newest DR Vault snapshot into a scratch OpenBao, then the DR copy's base backup and WAL, proves "
    "row checksums at a restore point and amcheck, and reports the RTO per phase, the achieved RPO and a "
    "projection to 1 TiB plus a day of WAL. Refused on production.",
    check_specs=[
        dg.AssetCheckSpec(
            "site_recovered_from_dr_copy",
            asset="site_loss_drill",
            description="The recovery, isolated from the running site, restored Vault and the database from the DR "
            "copy and proved them, and the drill's key could not read the primary bucket. Fails closed: any "
            "missing piece, mismatch or readable primary fails with its reason.",
        )
    ],
)
def site_loss_drill(
    context: dg.AssetExecutionContext,
    config: SiteLossDrillConfig,
    postgres_admin: PostgresResource,
    s3: S3Resource,
    backups: BackupStorageResource,
) -> dg.MaterializeResult:
    settings = get_settings()
    if settings.environment == "production":
        raise dg.Failure(
            "site_loss_drill starts a second OpenBao holding production's keys on the run's machine and is refused "
            "where CQOX_ENVIRONMENT=production; run it on a staging stack restored from production's DR copy."
        )
    backups.require_settings()
    material = UnsealMaterial.from_settings(settings)
    if material.mode != "key_file" or material.key_file is None:
        raise dg.Failure(
            f"unseal mode {material.mode or 'none'}: the site-loss drill unseals with a key file only (the local "
            "stack, or a staging copy of the escrow); Shamir holders run the recovery by hand (docs/vault-recovery.md)."
        )
    dr = backups.dr_client("reader")
    with postgres_admin.connect(autocommit=True) as conn:
        archive = Archive(dr, backups.dr_bucket, system_id(conn))
        primary = primary_position(conn)
        point, why = newest_point_in_copy(conn, archive)
    if point is None:
        return _result(context, SiteLossResult(error=f"nothing to prove: {why}"), None)
    context.log.info(
        f"primary at {primary.lsn} (timeline {primary.timeline}) at {primary.observed_at.isoformat()}; proving "
        f"restore point {point.name} ({point.lsn}) from {archive.where(archive.root + '/')}"
    )
    with tempfile.TemporaryDirectory(prefix="cqox-site-loss-plan-", dir=backups.drill_parent()) as tmp:
        work = Path(tmp)
        plan = SiteLossPlan(
            dr_endpoint=backups.dr_endpoint,
            dr_cacert=backups.dr_cacert,
            dr_bucket=backups.dr_bucket,
            dr_reader_credentials_file=backups.dr_reader_credentials_file,
            unseal_key_file=str(material.key_file),
            system_id=archive.system_id,
            transit_key=backups.transit_key,
            archiver_role=ARCHIVER_APPROLE,
            cli=str(platform_cli()),
            workdir=str(backups.drill_parent()),
            primary=primary,
            point=point,
            keep_scratch=config.keep_scratch,
            replay_timeout=config.replay_timeout,
        )
        plan_file, out = work / "plan.json", work / "result.json"
        write_file(plan_file, plan.to_json(), mode=0o600)
        # What the recovery tries with its key and must be refused: the primary bucket (no credential in it).
        probe = {
            "endpoint": settings.s3_endpoint or "",
            "cacert": str(settings.aws_ca_bundle or ""),
            "bucket": backups.bucket,
        }
        result = _run_isolated(context, plan_file, out, probe, work)
    return _result(context, result, point.name)


def _run_isolated(
    context: dg.AssetExecutionContext, plan_file: Path, out: Path, probe: dict, work: Path
) -> SiteLossResult:
    """The recovery in its own process and environment; its progress lines are this run's log."""
    argv = [sys.executable, "-m", "cqox_platform.site_loss.recovery", str(plan_file), str(out), json.dumps(probe)]
    with subprocess.Popen(
        argv, env=isolated_env(str(work)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        tail: list[str] = []
        for line in proc.stderr:
            context.log.info(line.rstrip())
            tail = [*tail[-20:], line.rstrip()]
        code = proc.wait()  # stderr is closed: it has exited (its replays time out on their own)
    if code != 0 or not out.exists():
        return SiteLossResult(error=f"the isolated recovery exited with code {code}: {' | '.join(tail[-8:])}")
    return SiteLossResult.from_json(out.read_text())


def _result(context: dg.AssetExecutionContext, result: SiteLossResult, point: str | None) -> dg.MaterializeResult:
    problems = [result.error] if result.error else []
    if result.status == "passed" and not result.primary_read.startswith(("refused", "unreachable")):
        problems.append("the drill did not show that its key cannot read the primary bucket")
    if result.rpo_seconds is None and result.status == "passed":
        problems.append("the restored server reported no replayed commit, so the achieved RPO is unknown")
    passed = result.status == "passed" and not problems
    if passed:
        context.log.info(
            f"site-loss drill passed: RTO {result.rto_seconds:.1f} s {result.seconds}, RPO {result.rpo_seconds} s "
            f"/ {result.rpo_bytes} bytes; projected {result.projection.get('total', 0) / 3600:.2f} h at 1 TiB"
        )
    else:
        context.log.error(f"site-loss drill FAILED: {'; '.join(problems) or result.status}")
    earlier = numeric_history(context, site_loss_drill.key, ["rto_seconds", "rpo_seconds"], HISTORY - 1)
    rto_history = [*earlier["rto_seconds"], result.rto_seconds if passed else None]
    rpo_history = [*earlier["rpo_seconds"], result.rpo_seconds if passed else None]
    chart = render_lines_svg(
        f"Site-loss drills: RTO and achieved RPO, seconds (last {HISTORY})",
        {"RTO": rto_history, "RPO": rpo_history},
        "s",
    )
    projected_total = result.projection.get("total", -1.0)
    metadata = {
        "status": "passed" if passed else "failed",
        **({"error": "; ".join(problems)} if problems else {}),
        "restore_point": point or "",
        "vault_snapshot": result.snapshot,
        "vault_snapshot_bytes": result.snapshot_bytes,
        "backup_id": result.backup_id,
        "database_bytes": result.database_bytes,
        "wal_bytes_replayed": result.wal_bytes_replayed,
        "rto_seconds": result.rto_seconds if passed else -1.0,
        # -1: not measured (the recovery did not get that far).
        "rpo_seconds": float(result.rpo_seconds) if result.rpo_seconds is not None else -1.0,
        "rpo_bytes": result.rpo_bytes if result.rpo_bytes is not None else -1,
        "rpo_target_seconds": RPO_TARGET_SECONDS,
        "restored_to": f"{result.restored_lsn} (last commit {result.restored_commit_at or 'unknown'})",
        "primary_read_with_drill_key": result.primary_read,
        "tables_checked": result.tables_checked,
        "rows_checked": result.rows_checked,
        "indexes_checked": result.indexes_checked,
        "phases": table(
            [
                column("phase"),
                column("seconds", "float", "measured (checks: the drill's proof, not part of the RTO)"),
                column("projected_seconds", "float", "at 1 TiB and a day (50 GiB) of WAL"),
            ],
            [[p, float(s), float(result.projection.get(p, 0.0))] for p, s in result.seconds.items()],
        ),
        "vault_restore_phases": dg.MetadataValue.json(result.vault_phases),
        "replay_phases": dg.MetadataValue.json(result.replay_phases),
        "proof_seconds": float(result.seconds.get("checks", 0.0)),
        "projected_rto_seconds": float(projected_total),
        "projected_rto_within_target": bool(0 <= projected_total <= ROADMAP_RTO_SECONDS),
        "history": dg.MetadataValue.md(svg_markdown(chart, "Site-loss drill history")),
    }
    description = (
        "; ".join(problems)
        if problems
        else f"recovered from the DR copy in {result.rto_seconds:.0f} s; lost {result.rpo_seconds:.0f} s of writes"
    )
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="site_recovered_from_dr_copy",
                passed=passed,
                description=description,
                metadata={"error": "; ".join(problems)} if problems else {},
            )
        ],
    )


site_loss_drill_job = dg.define_asset_job(
    "site_loss_drill_job",
    selection=[site_loss_drill],
    description="Recover Vault and the database from the DR copy and the unseal key alone, and measure it.",
)
site_loss_drill_schedule = dg.ScheduleDefinition(
    job=site_loss_drill_job,
    cron_schedule=DRILL_CRON,
    execution_timezone="UTC",
    # Off where it is refused (production): a weekly failure there would only be noise.
    default_status=dg.DefaultScheduleStatus.STOPPED
    if get_settings().environment == "production"
    else dg.DefaultScheduleStatus.RUNNING,
    description="Weekly: the site-loss drill (after the Sunday Vault restore drill).",
)

defs = dg.Definitions(assets=[site_loss_drill], jobs=[site_loss_drill_job], schedules=[site_loss_drill_schedule])
