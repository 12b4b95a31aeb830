"""Staleness of pushed metrics: every pusher declares how often it pushes, so one rule sees any pusher stop.

The Pushgateway serves a group's last values until the group is deleted, so a pusher that died leaves good-looking
gauges behind (an RPO of five minutes, for ever). Each pusher therefore puts ``cqox_push_expected_period_seconds``
into its own group, labelled with the severity its silence deserves, and ``CqoxPushedMetricsStale``
(``platform-alerts.yml``) fires for a group whose ``push_time_seconds`` is over ``STALE_AFTER_PERIODS`` periods
old. A new pusher is covered by pushing ``expected_period_sample`` with its samples; no new rule is needed.
"""

from __future__ import annotations

from cqox_platform.pushgateway import Sample

EXPECTED_PERIOD_METRIC = "cqox_push_expected_period_seconds"
STALE_ALERT = "CqoxPushedMetricsStale"
#: Periods without a push before the group is stale (the rule's ``3 *``): one late or failed push is not an alert.
STALE_AFTER_PERIODS = 3

#: wal_archive_status pushes the backup gauges every 15 minutes (the other backup assets push into the same group
#: less often): an RPO gauge 45 minutes old is blind, and what it guards pages, so its silence pages too.
BACKUP_PUSH_PERIOD_SECONDS = 900
BACKUP_STALE_SEVERITY = "page"
#: error_budget_sensor pushes the SLO gauges every 5 minutes; the burn-rate alerts themselves are Prometheus rules
#: over scraped traffic, so stale SLO gauges only blind dashboards: a ticket.
SLO_PUSH_PERIOD_SECONDS = 300
SLO_STALE_SEVERITY = "ticket"


def expected_period_sample(period_seconds: float, severity: str) -> Sample:
    """The sample a pusher adds to each push of its group (labels beyond the group's: only ``severity``)."""
    if period_seconds <= 0:
        raise ValueError(f"a push period must be positive, not {period_seconds}")
    return (EXPECTED_PERIOD_METRIC, {"severity": severity}, float(period_seconds))
