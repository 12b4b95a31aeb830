"""The error-budget sensor: burn rates every 5 minutes, gauges to the Pushgateway, incident runs on a page."""

import time
from typing import Literal
from urllib.parse import urlparse

import dagster as dg

from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.settings import get_settings
from cqox_platform.slo.burn import current_burn, push_gauges
from cqox_platform.slo.incidents import notify_webhook, record_incident
from cqox_platform.slo.spec import load_spec, spec_path


class IncidentConfig(dg.Config):
    slo: str
    #: The burn-rate alert tier (cqox_platform.slo.rules PAGE / TICKET); the launchpad offers exactly these.
    severity: Literal["page", "ticket"]
    burn_rates: dict[str, float | None]
    budget_remaining: float | None = None
    window_start: str


@dg.op(description="Record an SLO incident in audit_log and notify the configured webhook.")
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
    # The webhook URL is a secret for chat webhooks: it comes from the settings, never from run config, and is
    # never logged (only its host is).
    webhook = get_settings().slo_webhook_url
    if webhook is not None:
        url = webhook.get_secret_value()
        status = notify_webhook(url, config.slo, config.severity, details)
        context.log.info(f"notified the SLO webhook on {urlparse(url).hostname} (HTTP {status})")
    context.log.warning(f"SLO incident recorded for {config.slo}: burn {config.burn_rates}")


@dg.job(description="One SLO incident: audit entry and webhook notification.")
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
    pushgateway = settings.pushgateway_url
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
