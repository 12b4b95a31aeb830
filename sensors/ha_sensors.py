"""The timeline sensor: a new PostgreSQL timeline (failover or switchover) gets a fresh base backup and a drill.

After a promotion, WAL continues on a new timeline and every existing base backup sits on an older one; restores
then depend on the history files and on the old leader's last segments having been archived. A base backup on
the new timeline, proven by a drill right away, removes that dependency and proves the new leader archives.

The cursor is the cluster (its PostgreSQL system identifier) and the last timeline seen. The first tick only
records them (a sensor switched on must not back up because a timeline was ever raised); a higher timeline of
the same cluster requests one run per timeline with run key ``timeline:<system id>:<N>``, so a failover seen
twice never backs up twice. The key names the cluster because Dagster drops a request whose run key it has
seen before: a cluster rebuilt behind the same URLs starts again at timeline 1, and its failover to a timeline
number the old cluster once reached needs its backup and drill all the same. A different cluster is recorded
like a first tick.
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
    "base backup and a drill on the new timeline (run key timeline:<system id>:<N>).",
)
def timeline_change_sensor(
    context: dg.SensorEvaluationContext, patroni: PatroniResource
) -> dg.RunRequest | dg.SkipReason:
    if not patroni.configured:
        return dg.SkipReason(f"{NO_CLUSTER_MESSAGE}: nothing to watch")
    try:
        client = patroni.client()
        cluster = client.cluster()
        timeline = cluster.timeline
        if timeline is None:
            return dg.SkipReason(
                f"the cluster has no single leader right now ({cluster.answered_by}); timeline unknown"
            )
        system_id = client.system_identifier(cluster)
    except PatroniError as exc:
        return dg.SkipReason(f"Patroni is unreachable, timeline or cluster unknown: {exc}")
    last_system, last = _parse_cursor(context.cursor)
    if last is None or (last_system is not None and last_system != system_id):
        context.update_cursor(f"{system_id}:{timeline}")
        seen = "first tick" if last is None else f"another cluster than {last_system} answers"
        return dg.SkipReason(f"{seen}: recorded system {system_id} timeline {timeline} (leader {cluster.leader})")
    if timeline == last:
        return dg.SkipReason(f"timeline {timeline} unchanged (leader {cluster.leader})")
    context.update_cursor(f"{system_id}:{timeline}")
    if timeline < last:
        # A restore of this cluster put under the same URLs: nothing was promoted away from what we backed up.
        return dg.SkipReason(f"timeline went back from {last} to {timeline}: recorded it, no backup requested")
    context.log.info(f"timeline {last} -> {timeline} (leader {cluster.leader}): requesting a base backup and drill")
    return dg.RunRequest(
        run_key=f"timeline:{system_id}:{timeline}",
        tags={
            "cqox/system_id": system_id,
            "cqox/timeline_from": str(last),
            "cqox/timeline_to": str(timeline),
            "cqox/leader": str(cluster.leader),
        },
    )


def _parse_cursor(cursor: str | None) -> tuple[str | None, int | None]:
    """``(system id, timeline)`` from ``"<system id>:<timeline>"``; a bare ``"<timeline>"`` names no cluster."""
    if not cursor:
        return None, None
    system_id, _, timeline = cursor.rpartition(":")
    return system_id or None, int(timeline)


defs = dg.Definitions(jobs=[timeline_backup_job], sensors=[timeline_change_sensor])
