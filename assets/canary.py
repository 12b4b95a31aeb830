"""Canary rollouts as assets and jobs (group ``canary``).

Each decision run of the canary sensor is a materialization of ``canary_rollout`` in the rollout's partition.
The run is told only which state of the rollout it is for (``state_version``); it locks the rollout's row,
checks the rollout is still in that state, gathers the evidence from Prometheus itself (run config is not
evidence: anyone who can launch a run could write it), decides with the policy stored with the rollout, changes
the VirtualService and records the outcome (``cqox_platform.canary.rollout.run_decision``). A run for a state
that moved on is ``stale`` and changes nothing. The metadata is what a reviewer needs: the outcome, resolved
PromQL, canary and stable values, request counts, thresholds, the policy, the VirtualService
``resourceVersion`` before and after.

At most one decision run per rollout runs at a time: the row lock guarantees it; the run queue's tag limit on
``cqox/rollout`` (dagster.yaml) keeps the second run queued instead of waiting on the lock in a run worker.
"""

from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg

from assets.metadata import column, table
from cqox_platform.canary.decision import PROMOTED, ROLLED_BACK, Evidence
from cqox_platform.canary.operator import ABORT, APPROVE, PAUSE, PROMOTE, RESUME, operate
from cqox_platform.canary.policy import CanaryPolicy, policy_for
from cqox_platform.canary.promotion import PromotionResult
from cqox_platform.canary.release import release_budget
from cqox_platform.canary.rollout import DecisionRun, run_decision, start_rollout
from cqox_platform.canary.store import get_rollout, rollout_policy
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource

GROUP = "canary"
ROLLOUT_TAG = "cqox/rollout"
canary_partitions = dg.DynamicPartitionsDefinition(name="canary_rollouts")


def _verdict_table(policy: CanaryPolicy, run: DecisionRun) -> dg.TableMetadataValue:
    checks = {c.name: c for c in policy.metrics}
    values = {m.name: m for m in (run.evidence.metrics if run.evidence else ())}
    rows = []
    for v in run.decision.verdicts if run.decision else ():
        c, m = checks[v.name], values.get(v.name)
        rows.append(
            [
                v.name,
                v.canary,
                v.stable,
                c.max,
                c.max_over_stable,
                c.max_ratio_to_stable,
                v.passed,
                m.canary_query if m else None,
            ]
        )
    return table(
        [
            column("metric"),
            column("canary", "float", "the canary's value over the analysis window"),
            column("stable", "float", "the stable version's value over the same window"),
            column("max", "float", "threshold: the canary's value at most this"),
            column("max over stable", "float", "threshold: canary - stable at most this"),
            column("max ratio to stable", "float", "threshold: canary / stable at most this"),
            column("passed", "bool", "empty: no data"),
            column("canary PromQL", description="the resolved query the canary's value came from"),
        ],
        rows,
    )


class CanaryDecisionConfig(dg.Config):
    #: The rollout state (``canary_rollouts.state_version``) this decision is for; the sensor sets it. A run for
    #: any other state is recorded as stale and changes nothing.
    state_version: int


def _number(value: float | None) -> float:
    return value if value is not None else -1.0


@dg.asset(
    group_name=GROUP,
    partitions_def=canary_partitions,
    kinds={"kubernetes", "prometheus"},
    description="One canary decision per materialization (partition = rollout): promote, hold, roll back or "
    "complete, applied to the VirtualService with the evidence the run gathered; or stale, changing nothing.",
)
def canary_rollout(
    context: dg.AssetExecutionContext,
    config: CanaryDecisionConfig,
    postgres: PostgresResource,
    kubernetes: KubernetesResource,
    prometheus: PrometheusResource,
) -> dg.MaterializeResult:
    with postgres.connect(autocommit=True) as conn:
        run = run_decision(
            conn, kubernetes, prometheus.query, context.partition_key, config.state_version, run_id=context.run.run_id
        )
    rollout, policy, change = run.rollout, run.policy, run.change
    evidence = run.evidence or Evidence(None, None)
    context.log.info(f"{rollout.rollout_id}: {run.outcome} {run.action} - {run.reason}")
    return dg.MaterializeResult(
        metadata={
            "rollout": rollout.rollout_id,
            "image": rollout.image,
            "outcome": run.outcome,
            "action": run.action,
            "reason": run.reason,
            "state_version_before": rollout.state_version,
            "state_version_after": run.state_version_after,
            "weight_before": rollout.weight,
            "weight_after": run.weight_after,
            "status": run.status_after or rollout.status,
            "failures": run.decision.state.failures if run.decision else rollout.failures,
            "consecutive_holds": run.decision.state.consecutive_holds if run.decision else rollout.consecutive_holds,
            "canary_requests": _number(evidence.canary_requests),
            "stable_requests": _number(evidence.stable_requests),
            "budget_remaining": _number(evidence.budget_remaining),
            "prometheus_ok": evidence.prometheus_ok if run.evidence else False,
            "metrics": _verdict_table(policy, run),
            "evidence": dg.MetadataValue.json(asdict(run.evidence) if run.evidence else {}),
            "policy": f"{policy.source} v{policy.version}",
            "virtual_service": f"{policy.kubernetes.namespace}/{policy.kubernetes.virtual_service}",
            # The VirtualService's versions only when this run changed it (weight_change_attempts 0: it did not).
            **(
                {
                    "resource_version_before": change.resource_version_before,
                    "resource_version_after": change.resource_version_after,
                }
                if change
                else {}
            ),
            "weight_change_attempts": change.attempts if change else 0,
            **_promotion_metadata(run),
            **_webhook_metadata(run.webhooks),
            **_release_metadata(policy, rollout.started_at, run.status_after, prometheus.query),
        }
    )


def _release_metadata(policy: CanaryPolicy, started_at, status: str, query) -> dict:
    """When the rollout ended: per-version SLIs over its window and the budget the release (canary) consumed;
    nothing while it is still going."""
    if status not in (PROMOTED, ROLLED_BACK):
        return {}
    report = release_budget(policy, started_at, datetime.now(UTC), query)
    rows = [[r.version, r.slo, r.bad, r.total, r.error_ratio, r.objective, r.budget_consumed] for r in report.rows]
    metadata: dict[str, object] = {
        "release_budget_slo": report.slo,
        "release_budget_consumed": report.consumed if report.consumed is not None else -1.0,
        "release_window_seconds": report.window_seconds,
    }
    if rows:
        metadata["per_version_slo"] = table(
            [
                column("version"),
                column("SLO"),
                column("bad", "float", "bad events (requests) over the rollout's window"),
                column("total", "float", "all events over the rollout's window"),
                column("error ratio", "float", "bad / total"),
                column("objective", "float", "the SLO's objective, a ratio (0.999 = 99.9 %)"),
                column("budget spent", "float", "share of the SLO period's error budget spent (1 = all of it)"),
            ],
            rows,
        )
    else:
        metadata["per_version_slo_error"] = report.error or "no per-version data"
    return metadata


def _webhook_metadata(results) -> dict:
    """Each webhook called in the run: type, name, outcome, attempts, last answer (never the URL)."""
    if not results:
        return {}
    rows = [[r.type, r.name, "ok" if r.ok else "failed", r.attempts, r.detail] for r in results]
    columns = [
        column("type", description="pre-rollout, pre-step, post-rollout or rollback"),
        column("webhook"),
        column("outcome", description="ok or failed"),
        column("attempts", "int"),
        column("last answer", description="status code or error of the last attempt"),
    ]
    return {"webhooks": table(columns, rows)}


def _promotion_metadata(run: DecisionRun) -> dict:
    """Promotion to stable, phase by phase: what each saw and how long it took, or where it failed and where the
    traffic is. Empty when the run did not promote."""
    return _promotion_fields(run.promotion) if run.promotion is not None else {}


def _promotion_fields(result: PromotionResult) -> dict:
    rows = [[p.name, "done", p.seconds, p.detail] for p in result.phases]
    if not result.ok and result.failed_phase:
        rows.append([result.failed_phase, "failed", None, result.message])
    return {
        "promotion": "promoted to stable" if result.ok else f"failed at {result.failed_phase or 'start'}",
        **({"promotion_phase": result.last_phase} if result.last_phase else {}),
        "promotion_phases": table(
            [
                column("phase"),
                column("outcome", description="done or failed"),
                column("seconds", "float"),
                column("detail"),
            ],
            rows,
        ),
        "promotion_seconds": float(sum(p.seconds for p in result.phases)),
        "promotion_message": result.message,
    }


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


class CanaryOperatorConfig(dg.Config):
    #: The rollout to act on (``cqox-platform canary status`` lists them).
    rollout: str
    #: Why; recorded in audit_log with who acted and the state before and after.
    reason: str
    #: Who acts; empty: the run's ``dagster/user`` tag, else "dagster-ui".
    requested_by: str = ""


def _operator_job(action: str, summary: str) -> dg.JobDefinition:
    """``canary_<action>_job``: the CLI's ``canary <action>`` as a job, through the same core function (row lock,
    compare-and-set, audit_log); the outcome is also a materialization of the rollout's partition."""

    @dg.op(name=f"canary_{action}", description=summary)
    def act(
        context: dg.OpExecutionContext,
        config: CanaryOperatorConfig,
        postgres: PostgresResource,
        kubernetes: KubernetesResource,
        prometheus: PrometheusResource,
    ):
        who = config.requested_by or context.run.tags.get("dagster/user") or "dagster-ui"
        with postgres.connect(autocommit=True) as conn:
            result = operate(conn, kubernetes, config.rollout, action, who=who, reason=config.reason)
        context.log.info(result.message)
        metadata = {
            "rollout": result.rollout_id,
            "outcome": "applied",
            "action": f"operator_{action}",
            "reason": f"{action} by {who}: {config.reason}",
            "requested_by": who,
            "status_before": result.before["status"],
            "status": result.after["status"],
            "weight_before": result.before["weight"],
            "weight_after": result.after["weight"],
            "state_version_before": result.before["state_version"],
            "state_version_after": result.after["state_version"],
        }
        if result.promotion is not None:
            metadata.update(_promotion_fields(result.promotion))
        metadata.update(_webhook_metadata(result.webhooks))
        with postgres.connect() as conn:
            found = get_rollout(conn, result.rollout_id)
        metadata.update(
            _release_metadata(rollout_policy(found), found.started_at, result.after["status"], prometheus.query)
        )
        yield dg.AssetMaterialization(
            asset_key=canary_rollout.key, partition=result.rollout_id, metadata=metadata, description=result.message
        )
        if result.promotion is not None and not result.promotion.ok:
            raise dg.Failure(description=result.promotion.message, metadata=metadata)
        yield dg.Output(None)

    @dg.job(name=f"canary_{action}_job", description=f"{summary} Audited; launch from the UI with its config.")
    def job() -> None:
        act()

    return job


canary_operator_jobs = [
    _operator_job(action, summary)
    for action, summary in (
        (ABORT, "Roll a rollout back now, as a failed analysis would."),
        (PAUSE, "Pause a rollout's analysis; the sensor skips it with the reason."),
        (RESUME, "Resume a paused rollout."),
        (PROMOTE, "Promote a rollout to stable now, without further analysis."),
        (APPROVE, "Approve a rollout's next step (policy `confirm: true`)."),
    )
]

defs = dg.Definitions(assets=[canary_rollout], jobs=[canary_decision_job, canary_start_job, *canary_operator_jobs])
