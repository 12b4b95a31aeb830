"""The canary sensor: once per analysis interval per active rollout, gather evidence and request a decision run.

It decides with the same pure function the run uses, so the run key says what will happen (rollout, step,
action, interval number) and a repeated tick within an interval requests nothing new. Between intervals it
skips with the reason; it reads the database and runs a handful of instant queries, far inside the sensor
timeout.
"""

import json
from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg

from assets.canary import canary_decision_job, canary_partitions, collect
from cqox_platform.canary.decision import decide
from cqox_platform.canary.policy import policy_for
from cqox_platform.canary.store import active_rollouts
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource


@dg.sensor(
    job=canary_decision_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Analyses every active canary rollout once per policy interval and requests its decision run.",
)
def canary_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, prometheus: PrometheusResource
) -> dg.SensorResult | dg.SkipReason:
    with postgres.connect() as conn:
        rollouts = active_rollouts(conn)
    if not rollouts:
        return dg.SkipReason("no canary rollout in progress")
    now = datetime.now(UTC)
    requests, waiting, partitions = [], [], []
    for rollout in rollouts:
        policy = policy_for(rollout.service)
        since = (now - (rollout.last_decision_at or rollout.started_at)).total_seconds()
        if since < policy.interval_seconds:
            waiting.append(f"{rollout.rollout_id}: next analysis in {policy.interval_seconds - since:.0f} s")
            continue
        evidence = collect(policy, prometheus)
        decision = decide(policy, rollout.state, evidence)
        interval_no = int((now - rollout.started_at).total_seconds() // policy.interval_seconds)
        partitions.append(rollout.rollout_id)
        requests.append(
            dg.RunRequest(
                run_key=f"{rollout.rollout_id}:{rollout.step_index}:{decision.action}:{interval_no}",
                partition_key=rollout.rollout_id,
                run_config={"ops": {"canary_rollout": {"config": {"evidence": json.dumps(asdict(evidence))}}}},
                tags={"cqox/rollout": rollout.rollout_id, "cqox/decision": decision.action},
            )
        )
        context.log.info(f"{rollout.rollout_id}: {decision.action} ({decision.reason})")
    if not requests:
        return dg.SkipReason("; ".join(waiting))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[canary_partitions.build_add_request(partitions)],
    )


defs = dg.Definitions(sensors=[canary_sensor])
