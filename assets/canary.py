"""Canary rollouts as assets and jobs (group ``canary``).

Each decision of the canary sensor is a materialization of ``canary_rollout`` in the rollout's partition: the
run re-applies the pure decision function to the evidence the sensor gathered (same inputs, same answer, but
against the rollout's state as it is now), changes the VirtualService and records the outcome. The metadata is
the evidence a reviewer needs: resolved PromQL, canary and stable values, request counts, thresholds, the
policy version, and the VirtualService ``resourceVersion`` before and after.
"""

import json
from dataclasses import asdict

import dagster as dg

from cqox_platform.canary.analysis import budget_gate_remaining, gather_evidence
from cqox_platform.canary.decision import Decision, Evidence, decide, evidence_from_dict
from cqox_platform.canary.policy import CanaryPolicy, policy_for
from cqox_platform.canary.rollout import apply_decision, start_rollout
from cqox_platform.canary.store import get_rollout
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource

GROUP = "canary"
canary_partitions = dg.DynamicPartitionsDefinition(name="canary_rollouts")


def collect(policy: CanaryPolicy, prometheus: PrometheusResource) -> Evidence:
    return gather_evidence(
        policy, prometheus.query, budget_remaining=lambda: budget_gate_remaining(policy, prometheus.query)
    )


def _verdict_table(policy: CanaryPolicy, decision: Decision, evidence: Evidence) -> dg.MetadataValue:
    checks = {c.name: c for c in policy.metrics}
    values = {m.name: m for m in evidence.metrics}
    rows = [
        "| metric | canary | stable | max | max over stable | max ratio to stable | passed | canary PromQL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in decision.verdicts:
        c, m = checks[v.name], values.get(v.name)
        query = (m.canary_query if m else "").replace("|", "\\|")
        rows.append(
            f"| {v.name} | {v.canary} | {v.stable} | {c.max} | {c.max_over_stable} | {c.max_ratio_to_stable} "
            f"| {v.passed} | `{query}` |"
        )
    return dg.MetadataValue.md("\n".join(rows))


class CanaryDecisionConfig(dg.Config):
    #: The evidence the sensor gathered, as JSON (``dataclasses.asdict(Evidence)``).
    evidence: str


@dg.asset(
    group_name=GROUP,
    partitions_def=canary_partitions,
    kinds={"kubernetes", "prometheus"},
    description="One canary decision per materialization (partition = rollout): promote, hold, roll back or "
    "complete, applied to the VirtualService, with its evidence.",
)
def canary_rollout(
    context: dg.AssetExecutionContext,
    config: CanaryDecisionConfig,
    postgres: PostgresResource,
    kubernetes: KubernetesResource,
) -> dg.MaterializeResult:
    evidence = evidence_from_dict(json.loads(config.evidence))
    with postgres.connect(autocommit=True) as conn:
        rollout = get_rollout(conn, context.partition_key)
        policy = policy_for(rollout.service)
        decision = decide(policy, rollout.state, evidence)
        change = apply_decision(conn, kubernetes, policy, rollout, decision)
    context.log.info(f"{rollout.rollout_id}: {decision.action} - {decision.reason}")
    return dg.MaterializeResult(
        metadata={
            "rollout": rollout.rollout_id,
            "image": rollout.image,
            "action": decision.action,
            "reason": decision.reason,
            "weight_before": decision.weight_before,
            "weight_after": decision.weight_after,
            "status": decision.state.status,
            "failures": decision.state.failures,
            "consecutive_holds": decision.state.consecutive_holds,
            "canary_requests": evidence.canary_requests if evidence.canary_requests is not None else -1.0,
            "stable_requests": evidence.stable_requests if evidence.stable_requests is not None else -1.0,
            "budget_remaining": evidence.budget_remaining if evidence.budget_remaining is not None else -1.0,
            "prometheus_ok": evidence.prometheus_ok,
            "metrics": _verdict_table(policy, decision, evidence),
            "evidence": dg.MetadataValue.json(asdict(evidence)),
            "policy": f"{policy.source} v{policy.version}",
            "virtual_service": f"{policy.kubernetes.namespace}/{policy.kubernetes.virtual_service}",
            "resource_version_before": change.resource_version_before if change else "",
            "resource_version_after": change.resource_version_after if change else "",
            "weight_change_attempts": change.attempts if change else 0,
        }
    )


canary_decision_job = dg.define_asset_job(
    "canary_decision_job",
    selection=dg.AssetSelection.assets(canary_rollout),
    description="Apply one canary decision (requested by canary_sensor).",
)


class CanaryStartConfig(dg.Config):
    service: str = "cqox-engine"
    image: str


@dg.op(description="Start a canary rollout: set the canary Deployment's image and the first step's weight.")
def start_canary(
    context: dg.OpExecutionContext,
    config: CanaryStartConfig,
    postgres: PostgresResource,
    kubernetes: KubernetesResource,
) -> None:
    policy = policy_for(config.service)
    with postgres.connect(autocommit=True) as conn:
        rollout, change = start_rollout(conn, kubernetes, policy, config.image)
    context.instance.add_dynamic_partitions(canary_partitions.name, [rollout.rollout_id])
    context.log.info(
        f"started {rollout.rollout_id}: {config.image} at {rollout.weight} % (VirtualService resourceVersion "
        f"{change.resource_version_before} -> {change.resource_version_after}); previous image {rollout.previous_image}"
    )


@dg.job(description="Start a canary rollout of a service with a new image (launch from the UI with its config).")
def canary_start_job() -> None:
    start_canary()


defs = dg.Definitions(assets=[canary_rollout], jobs=[canary_decision_job, canary_start_job])
