"""Push gauges to the Prometheus Pushgateway in the text exposition format (no client library needed).

The Pushgateway takes writes only from holders of the pushers' basic-auth password (its ``--web.config.file``),
over TLS on the local stack: anyone who could push could otherwise report a restore drill that never ran.
``Pushgateway.from_settings`` names the URL, the user, the file holding the password and the CA; the password is
read when a request is made and never kept in the object, its repr, a log line or an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cqox_platform.errors import CqoxError

Sample = tuple[str, dict[str, str], float]


@dataclass(frozen=True)
class Pushgateway:
    """Where to push and as whom: the URL, the basic-auth user and the file with its password, the CA."""

    url: str
    user: str | None = None
    password_file: Path | None = None
    cacert: Path | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Pushgateway | None:
        """The Pushgateway of ``CQOX_PUSHGATEWAY_*``, or ``None`` when no URL is configured."""
        if not settings.pushgateway_url:
            return None
        return cls(
            url=settings.pushgateway_url,
            user=settings.pushgateway_user,
            password_file=settings.pushgateway_password_file,
            cacert=settings.pushgateway_cacert,
        )

    def as_dict(self) -> dict[str, str | None]:
        """Paths and names only (the drill journal keeps this to undo a push after a crash)."""
        return {
            "url": self.url,
            "user": self.user,
            "password_file": str(self.password_file) if self.password_file else None,
            "cacert": str(self.cacert) if self.cacert else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pushgateway:
        return cls(
            url=data["url"],
            user=data.get("user"),
            password_file=Path(data["password_file"]) if data.get("password_file") else None,
            cacert=Path(data["cacert"]) if data.get("cacert") else None,
        )

    def request(self, method: str, path: str, *, what: str, timeout: float, **kwargs: Any) -> requests.Response:
        """One authenticated request; an unreachable gateway, an unreadable password or a refusal raises
        ``CqoxError`` naming the gateway and what to check, never the password."""
        auth = None
        if self.user:
            if self.password_file is None:
                raise CqoxError(f"Pushgateway user {self.user} has no password file (CQOX_PUSHGATEWAY_PASSWORD_FILE).")
            try:
                auth = (self.user, self.password_file.read_text().strip())
            except OSError as exc:
                raise CqoxError(
                    f"cannot read the Pushgateway password file {self.password_file}: {exc.strerror}."
                ) from None
        verify: str | bool = str(self.cacert) if self.cacert else True
        try:
            response = requests.request(
                method, f"{self.url.rstrip('/')}{path}", auth=auth, verify=verify, timeout=timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise CqoxError(f"Pushgateway at {self.url} is unreachable ({type(exc).__name__}).") from None
        if response.status_code == 401:
            who = f"user {self.user}" if self.user else "no credentials"
            raise CqoxError(
                f"Pushgateway at {self.url} refused {what} with {who} (HTTP 401): set CQOX_PUSHGATEWAY_USER and "
                "CQOX_PUSHGATEWAY_PASSWORD_FILE to the pushers' credentials (`cqox-platform stack env` on the stack)."
            )
        if response.status_code >= 300:
            raise CqoxError(
                f"Pushgateway at {self.url} refused {what}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response


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


def _group_path(job: str, grouping: dict[str, str]) -> str:
    path = "/".join(f"{k}/{v}" for k, v in grouping.items())
    return f"/metrics/job/{job}" + (f"/{path}" if path else "")


def push(
    gateway: Pushgateway,
    job: str,
    grouping: dict[str, str],
    samples: Iterable[Sample],
    *,
    replace: bool = False,
    timeout: float = 10,
) -> int:
    """POST (update these metric names) or PUT (replace the group) samples; returns how many were sent."""
    body = render(list(samples))
    gateway.request(
        "PUT" if replace else "POST", _group_path(job, grouping), what="the metrics", timeout=timeout, data=body
    )
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def delete_group(gateway: Pushgateway, job: str, grouping: dict[str, str], timeout: float = 10) -> None:
    """Delete one group (all its metrics); deleting a group that does not exist succeeds, as the Pushgateway does."""
    path = _group_path(job, grouping)
    gateway.request("DELETE", path, what=f"to delete group {path}", timeout=timeout)


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
