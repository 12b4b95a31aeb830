"""Push gauges to the Prometheus Pushgateway in the text exposition format (no client library needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import requests

from cqox_platform.errors import CqoxError

Sample = tuple[str, dict[str, str], float]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + ",".join(escaped) + "}"


def render(samples: Iterable[Sample], help_text: dict[str, str] | None = None) -> str:
    lines: list[str] = []
    typed: set[str] = set()
    for name, labels, value in samples:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if name not in typed:
            typed.add(name)
            if help_text and name in help_text:
                lines.append(f"# HELP {name} {help_text[name]}")
            lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name}{_labels(labels)} {float(value)!r}")
    return "\n".join(lines) + "\n"


def push(
    url: str,
    job: str,
    grouping: dict[str, str],
    samples: Iterable[Sample],
    *,
    replace: bool = False,
    timeout: float = 10,
) -> int:
    """POST (update these metric names) or PUT (replace the group) samples; returns how many were sent."""
    body = render(list(samples))
    path = "/".join(f"{k}/{v}" for k, v in grouping.items())
    target = f"{url.rstrip('/')}/metrics/job/{job}" + (f"/{path}" if path else "")
    try:
        response = (requests.put if replace else requests.post)(target, data=body, timeout=timeout)
    except requests.RequestException as exc:
        raise CqoxError(f"Pushgateway at {url} is unreachable ({type(exc).__name__}).") from None
    if response.status_code >= 300:
        raise CqoxError(f"Pushgateway at {url} refused the metrics: HTTP {response.status_code} {response.text[:200]}")
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def delete_group(url: str, job: str, grouping: dict[str, str], timeout: float = 10) -> None:
    """Delete one group (all its metrics); deleting a group that does not exist succeeds, as the Pushgateway does."""
    path = "/".join(f"{k}/{v}" for k, v in grouping.items())
    target = f"{url.rstrip('/')}/metrics/job/{job}" + (f"/{path}" if path else "")
    try:
        response = requests.delete(target, timeout=timeout)
    except requests.RequestException as exc:
        raise CqoxError(f"Pushgateway at {url} is unreachable ({type(exc).__name__}).") from None
    if response.status_code >= 300:
        raise CqoxError(f"Pushgateway at {url} refused to delete group {job}/{path}: HTTP {response.status_code}")


# --- staleness: every pusher declares how often it pushes ------------------------------------------------------
# The Pushgateway serves a group's last values until the group is deleted, so a pusher that died leaves
# good-looking gauges behind (an RPO of five minutes, for ever). Each pusher therefore puts
# ``cqox_push_expected_period_seconds`` into its own group, labelled with the severity its silence deserves, and
# ``CqoxPushedMetricsStale`` (``cqox_platform/alerts/platform-alerts.yml``) fires for a group whose
# ``push_time_seconds`` is over ``STALE_AFTER_PERIODS`` periods old. A new pusher is covered by pushing
# ``expected_period_sample`` with its samples; no new rule is needed.

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
