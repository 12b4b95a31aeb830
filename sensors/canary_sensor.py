"""The canary sensor: once per analysis interval per active rollout, request that rollout's decision run.

It requests one run per rollout per interval whatever the decision will be (the run key has no action in it),
for the rollout's current ``state_version``; the run gathers the evidence and decides itself, so nothing the
sensor saw (or anyone could write into run config) is taken as evidence, and a run whose state moved on is
stale. A ``promoting`` rollout (a promotion to stable that failed midway) gets a run per interval too, which
runs the promotion again; a ``paused`` one gets none, and the skip reason says who paused it and why. Between
intervals it skips with the reason; it reads one table, far inside the sensor timeout.
"""

from datetime import UTC, datetime

import dagster as dg

from assets.canary import ROLLOUT_TAG, canary_decision_job, canary_partitions
from cqox_platform.canary.decision import PAUSED
from cqox_platform.canary.policy import PolicyError
from cqox_platform.canary.store import active_rollouts, rollout_policy
from cqox_platform.canary.transition import decision_run_key
from cqox_platform.resources.postgres import PostgresResource


@dg.sensor(
    job=canary_decision_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one decision run per active canary rollout and policy interval.",
)
def canary_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult | dg.SkipReason:
    with postgres.connect() as conn:
        rollouts = active_rollouts(conn)
    if not rollouts:
        return dg.SkipReason("no canary rollout in progress")
    now = datetime.now(UTC)
    requests, waiting, partitions = [], [], []
    for rollout in rollouts:
        if rollout.status == PAUSED:
            waiting.append(f"{rollout.rollout_id}: paused ({rollout.last_reason})")
            continue
        try:
            policy = rollout_policy(rollout)
        except PolicyError as exc:
            waiting.append(f"{rollout.rollout_id}: {exc}")
            context.log.error(str(exc))
            continue
        since = (now - (rollout.last_decision_at or rollout.started_at)).total_seconds()
        if since < policy.interval_seconds:
            waiting.append(f"{rollout.rollout_id}: next analysis in {policy.interval_seconds - since:.0f} s")
            continue
        partitions.append(rollout.rollout_id)
        requests.append(
            dg.RunRequest(
                run_key=decision_run_key(rollout.rollout_id, rollout.started_at, now, policy.interval_seconds),
                partition_key=rollout.rollout_id,
                run_config={"ops": {"canary_rollout": {"config": {"state_version": rollout.state_version}}}},
                tags={ROLLOUT_TAG: rollout.rollout_id, "cqox/state-version": str(rollout.state_version)},
            )
        )
        context.log.info(f"{rollout.rollout_id}: decision requested for step {rollout.step_index}")
    if not requests:
        return dg.SkipReason("; ".join(waiting))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[canary_partitions.build_add_request(partitions)],
    )


defs = dg.Definitions(sensors=[canary_sensor])
