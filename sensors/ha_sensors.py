"""The timeline sensor: a new PostgreSQL timeline (failover or switchover) gets a fresh base backup and a drill.

After a promotion, WAL continues on a new timeline and every existing base backup sits on an older one; restores
then depend on the history files and on the old leader's last segments having been archived. A base backup on
the new timeline, proven by a drill right away, removes that dependency and proves the new leader archives.

The cursor is the last timeline seen. The first tick only records it (a sensor switched on must not back up
because a timeline was ever raised); a higher timeline requests one run per timeline (run key
``timeline:<N>``), so a failover seen twice never backs up twice.
"""

import dagster as dg

from cqox_platform.ha.patroni_client import PatroniError
from cqox_platform.resources.patroni import NO_CLUSTER_MESSAGE, PatroniResource

timeline_backup_job = dg.define_asset_job(
    "timeline_backup_job",
    selection=dg.AssetSelection.assets("postgres_basebackup", "restore_drill"),
    description="A base backup on the cluster's new timeline, then a restore drill of it (timeline_change_sensor).",
)


@dg.sensor(
    job=timeline_backup_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the Patroni cluster's timeline; when it increases (failover or switchover) requests a "
    "base backup and a drill on the new timeline (run key timeline:<N>).",
)
def timeline_change_sensor(
    context: dg.SensorEvaluationContext, patroni: PatroniResource
) -> dg.RunRequest | dg.SkipReason:
    if not patroni.configured:
        return dg.SkipReason(f"{NO_CLUSTER_MESSAGE}: nothing to watch")
    try:
        cluster = patroni.client().cluster()
    except PatroniError as exc:
        return dg.SkipReason(f"Patroni is unreachable, timeline unknown: {exc}")
    timeline = cluster.timeline
    if timeline is None:
        return dg.SkipReason(f"the cluster has no single leader right now ({cluster.answered_by}); timeline unknown")
    last = int(context.cursor) if context.cursor else None
    if last is None:
        context.update_cursor(str(timeline))
        return dg.SkipReason(f"first tick: recorded timeline {timeline} (leader {cluster.leader})")
    if timeline == last:
        return dg.SkipReason(f"timeline {timeline} unchanged (leader {cluster.leader})")
    context.update_cursor(str(timeline))
    if timeline < last:
        # A new cluster under the same URLs (or a restore): nothing was promoted away from what we backed up.
        return dg.SkipReason(f"timeline went back from {last} to {timeline}: recorded it, no backup requested")
    context.log.info(f"timeline {last} -> {timeline} (leader {cluster.leader}): requesting a base backup and drill")
    return dg.RunRequest(
        run_key=f"timeline:{timeline}",
        tags={
            "cqox/timeline_from": str(last),
            "cqox/timeline_to": str(timeline),
            "cqox/leader": str(cluster.leader),
        },
    )


defs = dg.Definitions(jobs=[timeline_backup_job], sensors=[timeline_change_sensor])
