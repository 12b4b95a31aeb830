"""Push gauges to the Prometheus Pushgateway through ``prometheus_client``.

The exposition text (label values with newlines, backslashes and quotes escaped) and the group URL (grouping values
quoted, or base64 when they hold a ``/``) are ``prometheus_client``'s; only the transport is ours, a handler that
sends the request with ``requests`` so that TLS is verified against the stack's CA and the pushers' basic auth is
sent. The WAL path (``archive_command``, ``restore_command``) pushes nothing and never imports this module (the
``wal-path-standalone`` import contract forbids ``prometheus_client`` there).

The Pushgateway takes writes only from holders of the pushers' basic-auth password (its ``--web.config.file``),
over TLS on the local stack: anyone who could push could otherwise report a restore drill that never ran.
``Pushgateway.from_settings`` names the URL, the user, the file holding the password and the CA; the password is
read when a request is made and never kept in the object, its repr, a log line or an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway, pushadd_to_gateway
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
        """One authenticated request to ``path`` under the gateway's URL; see ``send``."""
        return self.send(method, f"{self.url.rstrip('/')}{path}", what=what, timeout=timeout, **kwargs)

    def send(self, method: str, url: str, *, what: str, timeout: float | None, **kwargs: Any) -> requests.Response:
        """One authenticated request, TLS verified against ``cacert`` (the system's CAs without one); an
        unreachable gateway, an unreadable password or a refusal raises ``CqoxError`` naming the gateway and what to
        check, never the password."""
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
            response = requests.request(method, url, auth=auth, verify=verify, timeout=timeout, **kwargs)
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

    def handler(self, what: str) -> Callable[..., Callable[[], None]]:
        """A ``prometheus_client`` push handler that sends its request through ``send`` (TLS against the CA, basic
        auth, errors that say what to set); ``what`` names the request in those errors."""

        def handler(
            url: str, method: str, timeout: float | None, headers: Sequence[tuple[str, str]], data: bytes
        ) -> Callable[[], None]:
            def handle() -> None:
                self.send(method, url, what=what, timeout=timeout, headers=dict(headers), data=data)

            return handle

        return handler


class _Samples(Collector):
    """The samples of one push as gauge families, one per metric name, in the order first seen; a sample with no
    value (``None`` or NaN: not measured) is left out rather than pushed as NaN."""

    def __init__(self, samples: Iterable[Sample], help_text: dict[str, str] | None = None) -> None:
        families: dict[str, Metric] = {}
        for name, labels, value in samples:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if name not in families:
                families[name] = Metric(name, (help_text or {}).get(name, ""), "gauge")
            families[name].add_sample(name, {k: str(v) for k, v in labels.items()}, float(value))
        self.families = list(families.values())
        self.count = sum(len(f.samples) for f in self.families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _registry(collector: _Samples) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(samples: Iterable[Sample], help_text: dict[str, str] | None = None) -> str:
    """The exposition text ``push`` sends for these samples (an empty ``# HELP`` is the Pushgateway's no help)."""
    return generate_latest(_registry(_Samples(samples, help_text))).decode()


def push(
    gateway: Pushgateway,
    job: str,
    grouping: dict[str, str],
    samples: Iterable[Sample],
    *,
    replace: bool = False,
    timeout: float = 10,
) -> int:
    """POST (``pushadd_to_gateway``: update these metric names) or PUT (``push_to_gateway``: replace the group)
    samples; returns how many were sent."""
    collector = _Samples(samples)
    send = push_to_gateway if replace else pushadd_to_gateway
    send(
        gateway.url,
        job,
        _registry(collector),
        grouping_key=grouping,
        timeout=timeout,
        handler=gateway.handler("the metrics"),
    )
    return collector.count


def delete_group(gateway: Pushgateway, job: str, grouping: dict[str, str], timeout: float = 10) -> None:
    """Delete one group (all its metrics); deleting a group that does not exist succeeds, as the Pushgateway does."""
    group = "/".join([f"/metrics/job/{job}", *(f"{k}/{v}" for k, v in grouping.items())])
    delete_from_gateway(
        gateway.url, job, grouping_key=grouping, timeout=timeout, handler=gateway.handler(f"to delete group {group}")
    )


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
