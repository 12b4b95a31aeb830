"""High availability of the Patroni cluster as an asset and two operator jobs (group ``ha``).

``postgres_cluster_status`` observes the cluster from two sides, Patroni's REST API (roles, states, timeline,
synchronous mode) and the leader's ``pg_stat_replication`` through the ``postgres`` endpoint (real streaming
state and byte lag), and its four checks are computed from that observation by ``cqox_platform.ha
.cluster_checks``. ``ha_switchover_job`` and ``ha_reinit_job`` are what an operator launches from the UI with
run config; they share ``cqox_platform.ha.operations`` with the CLI, so both wait and audit the same way.
"""

import dagster as dg

from assets.metadata import column, table
from cqox_platform.charts import render_lines_svg, svg_markdown
from cqox_platform.errors import CqoxError
from cqox_platform.ha import operations
from cqox_platform.ha.cluster_checks import (
    CHECK_NAMES,
    DEFAULT_MAX_LAG_BYTES,
    CheckOutcome,
    Observation,
    evaluate,
)
from cqox_platform.ha.patroni_client import PatroniClient
from cqox_platform.ha.replication import read_endpoint
from cqox_platform.resources.patroni import NoPatroniClusterError, PatroniResource
from cqox_platform.resources.postgres import PostgresResource

GROUP = "ha"
ASSET = "postgres_cluster_status"
HISTORY = 30


class ClusterStatusConfig(dg.Config):
    #: Bound of ``replication_lag_within_bound``: bytes of WAL a replica may not have replayed yet.
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES
    #: Members the cluster should have; fewer registered in Patroni fails ``replicas_streaming``.
    expected_members: int = 3


#: What each check proves, as the UI shows it on the check's page.
CHECK_DESCRIPTIONS = {
    "exactly_one_leader": "One member holds Patroni's leader key and the postgres endpoint reaches that server "
    "(no second writable server).",
    "replicas_streaming": "Every member but the leader streams WAL from it, and Patroni lists as many members as "
    "expected_members.",
    "replication_lag_within_bound": "Every replica has replayed to within max_lag_bytes of the leader's WAL; an "
    "unknown lag fails.",
    "sync_standby_present_when_sync_mode": "In synchronous mode, a standby is synchronous for both Patroni and the "
    "server (a commit waits for it); passes in asynchronous mode.",
}


def _client(patroni: PatroniResource) -> PatroniClient:
    try:
        return patroni.client()
    except NoPatroniClusterError as exc:
        raise dg.Failure(description=str(exc)) from None


def _members_table(obs: Observation) -> dg.TableMetadataValue:
    """One row per member; the replication columns are empty for the leader (it streams to, not from)."""
    rows = []
    for m in obs.cluster.members:
        row = None if m.is_leader else obs.row(m.name)
        streaming = None if m.is_leader else (row.state if row else "not connected")
        rows.append(
            [
                m.name,
                m.role,
                m.state,
                m.timeline,
                f"{m.host}:{m.port}",
                streaming,
                row.sync_state if row else None,
                row.replay_lag_bytes if row else None,
                row.replay_lag_seconds if row else None,
            ]
        )
    return table(
        [
            column("member"),
            column("role"),
            column("Patroni state"),
            column("timeline", "int"),
            column("address"),
            column("streaming", description="pg_stat_replication state on the leader; empty for the leader"),
            column("sync", description="sync_state on the leader: sync, quorum, potential or async"),
            column("lag (bytes)", "int", "WAL received but not yet replayed; empty: unknown or the leader"),
            column("lag (s)", "float", "replay lag in time; empty: unknown or the leader"),
        ],
        rows,
    )


def _lag_history(context: dg.AssetExecutionContext, current: dict[str, int | None], bound: int) -> str:
    """Replay lag per replica over this and the previous materializations, in KiB."""
    records = context.instance.fetch_materializations(dg.AssetKey(ASSET), limit=HISTORY - 1).records
    runs: list[dict] = []
    for record in reversed(records):
        materialization = record.asset_materialization
        value = materialization.metadata.get("replica_lag_bytes") if materialization else None
        runs.append(value.value if value is not None and isinstance(value.value, dict) else {})
    runs.append(current)
    names = sorted({name for run in runs for name in run})
    series = {name: [None if run.get(name) is None else round(run[name] / 1024, 1) for run in runs] for name in names}
    return render_lines_svg(
        f"Replica replay lag, KiB (last {len(runs)} observations)",
        series,
        " KiB",
        refs={"bound": round(bound / 1024, 1)},
    )


def _check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=outcome.name, passed=outcome.passed, description=outcome.description, metadata=outcome.metadata
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "patroni"},
    description="The Patroni cluster as observed now: leader, timeline, members, synchronous mode (Patroni's REST "
    "API) and each replica's streaming state and byte lag (the leader's pg_stat_replication through the postgres "
    "endpoint).",
    check_specs=[dg.AssetCheckSpec(name, asset=ASSET, description=CHECK_DESCRIPTIONS[name]) for name in CHECK_NAMES],
)
def postgres_cluster_status(
    context: dg.AssetExecutionContext,
    config: ClusterStatusConfig,
    patroni: PatroniResource,
    postgres_admin: PostgresResource,
) -> dg.MaterializeResult:
    client = _client(patroni)
    cluster = client.cluster()
    sync_mode = bool(client.config().get("synchronous_mode"))
    # A superuser login: other roles see NULL LSNs in pg_stat_replication.
    with postgres_admin.connect(autocommit=True) as conn:
        endpoint, replication = read_endpoint(conn)
    obs = Observation(cluster=cluster, sync_mode=sync_mode, endpoint=endpoint, replication=replication)
    outcomes = evaluate(obs, max_lag_bytes=config.max_lag_bytes, expected_members=config.expected_members)
    for outcome in outcomes:
        (context.log.info if outcome.passed else context.log.warning)(f"{outcome.name}: {outcome.description}")
    lags = {m.name: (obs.row(m.name).replay_lag_bytes if obs.row(m.name) else None) for m in cluster.replicas}
    metadata: dict[str, object] = {
        "leader": cluster.leader or "none",
        "timeline": cluster.timeline if cluster.timeline is not None else -1,
        "members": _members_table(obs),
        "replica_lag_bytes": dg.MetadataValue.json(lags),
        "max_replica_lag_bytes": max((v for v in lags.values() if v is not None), default=0),
        "sync_mode": sync_mode,
        "sync_standbys": dg.MetadataValue.json(obs.sync_standbys),
        "paused": cluster.paused,
        "endpoint": f"{postgres_admin.host}:{postgres_admin.port} -> server port {endpoint.port}"
        + (" (in recovery)" if endpoint.in_recovery else ""),
        "patroni_answered_by": cluster.answered_by,
        "lag_history": dg.MetadataValue.md(svg_markdown(_lag_history(context, lags, config.max_lag_bytes), "lag")),
    }
    for name, lag in lags.items():
        metadata[f"lag_bytes_{name}"] = lag if lag is not None else -1
    return dg.MaterializeResult(metadata=metadata, check_results=[_check_result(o) for o in outcomes])


# --- operator jobs -------------------------------------------------------------------------------------------


class SwitchoverConfig(dg.Config):
    #: The replica to make the leader (a Patroni member name, e.g. node2).
    candidate: str
    timeout_seconds: float = operations.SWITCHOVER_TIMEOUT


class ReinitConfig(dg.Config):
    #: The replica to wipe and clone again from the leader.
    member: str
    timeout_seconds: float = operations.REINIT_TIMEOUT


def _run_operation(
    context: dg.OpExecutionContext,
    operation,
    target: str,
    timeout: float,
    patroni: PatroniResource,
    postgres_admin: PostgresResource,
) -> None:
    """Run one of ``cqox_platform.ha.operations`` as this run (who = run id), failing the op on its error."""
    try:
        result = operation(
            _client(patroni),
            target,
            who=context.run_id,
            via="dagster",
            connect=lambda: postgres_admin.connect(autocommit=True),
            timeout=timeout,
            log=context.log.info,
        )
    except CqoxError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"{result.action} {result.target} done in {result.seconds} s: {result.details}")


@dg.op(description="Planned switchover to the configured replica; waits until the old leader streams from it.")
def ha_switchover(
    context: dg.OpExecutionContext,
    config: SwitchoverConfig,
    patroni: PatroniResource,
    postgres_admin: PostgresResource,
) -> None:
    _run_operation(context, operations.switchover, config.candidate, config.timeout_seconds, patroni, postgres_admin)


@dg.op(description="Re-clone the configured replica from the leader; waits until it streams again.")
def ha_reinit(
    context: dg.OpExecutionContext,
    config: ReinitConfig,
    patroni: PatroniResource,
    postgres_admin: PostgresResource,
) -> None:
    _run_operation(context, operations.reinitialize, config.member, config.timeout_seconds, patroni, postgres_admin)


@dg.job(
    description="Switch the Patroni leader over to a named replica (config: candidate), wait until the cluster is "
    "streaming again, and record it in audit_log.",
    tags={"cqox/ha": "switchover"},
)
def ha_switchover_job() -> None:
    ha_switchover()


@dg.job(
    description="Reinitialise a replica (config: member) from the leader, wait until it streams, and record it in "
    "audit_log.",
    tags={"cqox/ha": "reinit"},
)
def ha_reinit_job() -> None:
    ha_reinit()


defs = dg.Definitions(assets=[postgres_cluster_status], jobs=[ha_switchover_job, ha_reinit_job])
