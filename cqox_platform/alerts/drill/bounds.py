"""How long an alert may take to reach the receiver, derived from what is loaded, not written down.

From injection to a notification at the receiver an alert goes through: the fault becoming visible in the data
(``onset``: the family's threshold, e.g. three declared push periods), one scrape, the first rule evaluation that
sees it, the rule's ``for``, the evaluation that turns it from pending to firing, Alertmanager's ``group_wait``
for a new group, and the HTTP hops (``SEND_SLACK_SECONDS``). Scrape interval, rule ``for`` and group interval
come from Prometheus's loaded configuration and rules (``/api/v1/status/config``, ``/api/v1/rules``), group_wait
from the routing Alertmanager runs (``/api/v2/status``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

#: Prometheus -> Alertmanager -> receiver, the notification itself: seconds at most on one host.
SEND_SLACK_SECONDS = 10.0
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str | float | int) -> float:
    """Prometheus/Alertmanager durations (``1m30s``, ``15s``) or plain seconds, in seconds."""
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class LoadedRule:
    name: str
    group: str
    for_seconds: float
    interval_seconds: float
    labels: dict[str, str]
    query: str


def find_rule(groups: dict[str, dict], alertname: str, labels: dict[str, str] | None = None) -> LoadedRule | None:
    """The loaded alerting rule ``alertname`` (whose static labels match ``labels``), or None when not loaded."""
    for group in groups.values():
        for rule in group.get("rules", []):
            if rule.get("type") != "alerting" or rule.get("name") != alertname:
                continue
            static = rule.get("labels", {})
            if labels and any(k in static and static[k] != v for k, v in labels.items()):
                continue
            return LoadedRule(
                alertname,
                group["name"],
                float(rule.get("duration", 0)),
                float(group["interval"]),
                static,
                rule["query"],
            )
    return None


def group_interval(groups: dict[str, dict], name: str) -> float | None:
    group = groups.get(name)
    return float(group["interval"]) if group else None


def scrape_interval(prometheus_config: dict[str, Any], job: str | None = None) -> float:
    """A job's scrape interval, or the global one."""
    default = parse_duration(prometheus_config.get("global", {}).get("scrape_interval", "1m"))
    for scrape in prometheus_config.get("scrape_configs", []):
        if scrape.get("job_name") == job and "scrape_interval" in scrape:
            return parse_duration(scrape["scrape_interval"])
    return default


def group_wait(alertmanager_status: dict[str, Any]) -> float:
    """The root route's group_wait of the configuration Alertmanager runs (30s when unset, its default)."""
    route = yaml.safe_load(alertmanager_status["config"]["original"]).get("route", {})
    return parse_duration(route.get("group_wait", "30s"))


@dataclass(frozen=True)
class Bound:
    onset: float
    onset_why: str
    scrape: float
    evaluation: float
    for_: float
    group_wait: float
    slack: float = SEND_SLACK_SECONDS

    @property
    def seconds(self) -> float:
        # Two evaluations: the first that sees the data (pending) and the one after `for` (firing).
        return self.onset + self.scrape + 2 * self.evaluation + self.for_ + self.group_wait + self.slack

    def formula(self) -> str:
        return (
            f"onset {self.onset:g} s ({self.onset_why}) + scrape {self.scrape:g} s + 2 x evaluation "
            f"{self.evaluation:g} s + for {self.for_:g} s + group_wait {self.group_wait:g} s + send {self.slack:g} s "
            f"= {self.seconds:g} s"
        )
