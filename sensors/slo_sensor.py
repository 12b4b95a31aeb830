"""The error-budget sensor: burn rates every 5 minutes, gauges to the Pushgateway, incident runs on a page.

The incident run records the incident in ``audit_log``; it notifies no one. Paging has one path: the burn-rate
rules (``slo_alert_rules``) fire in Prometheus, and Alertmanager routes them (``alertmanager_config``: page to
PagerDuty, ticket to the webhook, grouped per service and alert family, a page inhibiting its SLO's ticket).
A second notification from here would page twice for one burn and bypass silences and inhibition.
"""

import time
from typing import Literal

import dagster as dg

from cqox_platform.pushgateway import Pushgateway
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.settings import get_settings
from cqox_platform.slo.burn import current_burn, push_gauges
from cqox_platform.slo.incidents import record_incident
from cqox_platform.slo.spec import load_spec, spec_path


class IncidentConfig(dg.Config):
    slo: str
    #: The burn-rate alert tier (cqox_platform.slo.rules PAGE / TICKET); the launchpad offers exactly these.
    severity: Literal["page", "ticket"]
    burn_rates: dict[str, float | None]
    budget_remaining: float | None = None
    window_start: str


@dg.op(description="Record an SLO incident in audit_log (paging is Alertmanager's: one paging path).")
def record_slo_incident(context: dg.OpExecutionContext, config: IncidentConfig, postgres: PostgresResource) -> None:
    details = {
        "slo": config.slo,
        "severity": config.severity,
        "burn_rates": config.burn_rates,
        "budget_remaining": config.budget_remaining,
        "window_start": config.window_start,
        "run_id": context.run_id,
    }
    with postgres.connect(autocommit=True) as conn:
        record_incident(conn, config.slo, details)
    context.log.warning(
        f"SLO incident recorded for {config.slo}: burn {config.burn_rates}; the page goes out through Alertmanager "
        f"({config.slo}'s SLOErrorBudgetBurnPage alert)"
    )


@dg.job(description="One SLO incident: the audit entry (the page itself goes out through Alertmanager).")
def slo_incident_job() -> None:
    record_slo_incident()


@dg.sensor(
    job=slo_incident_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Computes burn rates from Prometheus, pushes slo_* gauges, opens incidents on page burns.",
)
def error_budget_sensor(
    context: dg.SensorEvaluationContext, prometheus: PrometheusResource
) -> dg.SensorResult | dg.SkipReason:
    settings = get_settings()
    spec = load_spec(spec_path(settings))
    statuses = current_burn(spec, prometheus.query)
    pushgateway = Pushgateway.from_settings(settings)
    pushed = push_gauges(pushgateway, spec.service, statuses) if pushgateway else 0
    window_start = time.strftime("%Y-%m-%dT%H:00Z", time.gmtime())  # one incident per SLO per hour of burning
    requests_ = []
    for s in statuses:
        if s.page(spec.period_days):
            requests_.append(
                dg.RunRequest(
                    run_key=f"slo-incident:{s.slo}:{window_start}",
                    run_config={
                        "ops": {
                            "record_slo_incident": {
                                "config": {
                                    "slo": s.slo,
                                    "severity": "page",
                                    "burn_rates": s.burn_rates,
                                    "budget_remaining": s.budget_remaining,
                                    "window_start": window_start,
                                }
                            }
                        }
                    },
                    tags={"cqox/slo": s.slo, "cqox/severity": "page"},
                )
            )
    summary = {s.slo: {"1h": s.burn_rates.get("1h"), "remaining": s.budget_remaining} for s in statuses}
    context.log.info(f"pushed {pushed} gauges; burn {summary}")
    if not requests_:
        no_data = [s.slo for s in statuses if not s.has_data]
        reason = (
            f"no page-level burn ({len(statuses)} SLOs; no data for {no_data})"
            if no_data
            else f"no page-level burn across {len(statuses)} SLOs"
        )
        return dg.SkipReason(reason)
    return dg.SensorResult(run_requests=requests_)


defs = dg.Definitions(jobs=[slo_incident_job], sensors=[error_budget_sensor])
