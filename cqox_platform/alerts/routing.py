"""Alert routing as code: ``routing.yaml`` rendered into Alertmanager's configuration, checked and route-tested
with ``amtool`` before anything loads it.

Rendering is pure (spec and endpoints in, YAML out). Validation writes the rendered file into a private
temporary directory (it holds the PagerDuty routing key), runs ``amtool check-config`` and one
``amtool config routes test --verify.receivers=...`` per case: the spec's own cases and one per alert rule the
platform ships (backup, platform and staleness alerts, the SLO burn-rate alerts), expected to reach the
receiver its severity routes to; the Watchdog, the heartbeat receiver.
Output of amtool is scrubbed of the key and the webhook URL before it can reach an error message.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cqox_platform.alerts import BACKUP_ALERT_RULES, PLATFORM_ALERT_RULES, ROUTING_SPEC, SERVICE_ALERT_RULES
from cqox_platform.alerts.client import AlertmanagerClient, AlertmanagerError
from cqox_platform.errors import AlertingError
from cqox_platform.slo.rules import ABSENT_ALERT, ABSENT_SEVERITY, ALERT_NAMES

#: Where the PagerDuty routing key lives in Vault KV (mount ``secret``): the platform's AppRole may read it.
PAGERDUTY_SECRET = "cqox/alerting/pagerduty"
PAGERDUTY_FIELD = "routing_key"
RECEIVER_KINDS = ("pagerduty", "tickets")
#: The dead man's switch's receiver: a webhook to a service that pages when the Watchdog's notifications stop.
HEARTBEAT_RECEIVER = "heartbeat"


class RoutingError(AlertingError):
    """The routing spec is invalid, or amtool rejected the rendered configuration or one of its route tests."""


@dataclass(frozen=True)
class RouteCase:
    labels: dict[str, str]
    receivers: tuple[str, ...]
    origin: str  # "spec" or the rule file the alert comes from


def duration_seconds(text: str) -> float:
    """Alertmanager's durations as routing.yaml writes them: ``0s``, ``50s``, ``1m``, ``3m``, ``1h``, ``1h30m``."""
    import re

    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or parts is None:
        raise RoutingError(f"{text!r} is not a duration like 30s, 5m or 1h30m.")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class HeartbeatRoute:
    """The Watchdog's route to the heartbeat receiver, and how long the snitch service waits before it pages."""

    alertname: str
    group_wait: str
    group_interval: str
    repeat_interval: str
    expect_within: str

    @property
    def period_seconds(self) -> float:
        """How often a notification is sent: at every flush (each group_interval) once repeat_interval passed."""
        interval, repeat = duration_seconds(self.group_interval), duration_seconds(self.repeat_interval)
        return interval * max(1, -(-repeat // interval))

    @property
    def expect_within_seconds(self) -> float:
        return duration_seconds(self.expect_within)

    def timing(self) -> dict[str, str]:
        return {
            "group_wait": self.group_wait,
            "group_interval": self.group_interval,
            "repeat_interval": self.repeat_interval,
        }


@dataclass(frozen=True)
class RoutingSpec:
    group_by: tuple[str, ...]
    timing: dict[str, str]
    routes: tuple[tuple[str, str], ...]  # (severity, receiver)
    default_receiver: str
    inhibit: tuple[dict[str, Any], ...]
    tests: tuple[RouteCase, ...]
    heartbeat: HeartbeatRoute

    def receiver_for(self, severity: str | None) -> str:
        return next((r for s, r in self.routes if s == severity), self.default_receiver)

    def receiver_of(self, labels: dict[str, str]) -> str:
        if labels.get("alertname") == self.heartbeat.alertname:
            return HEARTBEAT_RECEIVER
        return self.receiver_for(labels.get("severity"))


def load_spec(path: Path = ROUTING_SPEC) -> RoutingSpec:
    raw = yaml.safe_load(path.read_text())
    try:
        routes = tuple((str(r["severity"]), str(r["receiver"])) for r in raw["routes"])
        spec = RoutingSpec(
            group_by=tuple(raw["group_by"]),
            timing={k: str(v) for k, v in raw.get("timing", {}).items()},
            routes=routes,
            default_receiver=str(raw["default_receiver"]),
            inhibit=tuple(raw.get("inhibit", [])),
            tests=tuple(
                RouteCase({k: str(v) for k, v in t["labels"].items()}, tuple(t["receivers"]), "spec")
                for t in raw.get("tests", [])
            ),
            heartbeat=HeartbeatRoute(**{k: str(v) for k, v in raw["heartbeat"].items()}),
        )
    except (KeyError, TypeError) as exc:
        raise RoutingError(f"{path}: routing spec is missing or mistypes {exc}; see the file's comments.") from None
    unknown = {r for _, r in spec.routes} | {spec.default_receiver}
    unknown -= set(RECEIVER_KINDS)
    if unknown:
        raise RoutingError(f"{path}: unknown receivers {sorted(unknown)}; known: {list(RECEIVER_KINDS)}.")
    beat = spec.heartbeat
    if beat.expect_within_seconds < 2 * beat.period_seconds:
        raise RoutingError(
            f"{path}: heartbeat.expect_within ({beat.expect_within}) is less than two heartbeat periods "
            f"({beat.period_seconds:.0f} s from group_interval {beat.group_interval} and repeat_interval "
            f"{beat.repeat_interval}): one lost notification would page. Raise expect_within or send more often."
        )
    return spec


def shipped_alerts() -> list[tuple[dict[str, str], str]]:
    """Every alert rule the platform ships, as (labels incl. alertname, origin)."""
    found = []
    for rule_file in (BACKUP_ALERT_RULES, PLATFORM_ALERT_RULES, SERVICE_ALERT_RULES):
        for group in yaml.safe_load(rule_file.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    # A templated label (CqoxPushedMetricsStale's service) has no value until it fires: left out;
                    # a rule whose severity comes from its series gets its cases in routing.yaml's tests.
                    labels = {k: v for k, v in rule.get("labels", {}).items() if "{{" not in str(v)}
                    found.append(({"alertname": rule["alert"], **labels}, rule_file.name))
    for severity, name in ALERT_NAMES.items():
        labels = {"alertname": name, "severity": severity, "service": "cqox-engine", "slo": "availability"}
        found.append((labels, "slo burn-rate rules"))
    absent = {"alertname": ABSENT_ALERT, "severity": ABSENT_SEVERITY, "service": "cqox-engine", "slo": "availability"}
    found.append((absent, "slo absent-data rules"))
    return found


def route_cases(spec: RoutingSpec) -> list[RouteCase]:
    cases = [RouteCase(labels, (spec.receiver_of(labels),), origin) for labels, origin in shipped_alerts()]
    return cases + list(spec.tests)


def render(spec: RoutingSpec, *, pagerduty_url: str, routing_key: str, webhook_url: str, heartbeat_url: str) -> str:
    """Alertmanager's configuration for ``spec`` with these endpoints (the only part that differs per stack)."""
    heartbeat_route = {
        "matchers": [f'alertname="{spec.heartbeat.alertname}"'],
        "receiver": HEARTBEAT_RECEIVER,
        "group_by": ["alertname"],
        **spec.heartbeat.timing(),
    }
    config = {
        "route": {
            "receiver": spec.default_receiver,
            "group_by": list(spec.group_by),
            **spec.timing,
            "routes": [
                heartbeat_route,
                *({"matchers": [f'severity="{severity}"'], "receiver": rcv} for severity, rcv in spec.routes),
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": [f'{k}="{v}"' for k, v in rule["source"].items()],
                "target_matchers": [f'{k}="{v}"' for k, v in rule["target"].items()],
                "equal": list(rule["equal"]),
            }
            for rule in spec.inhibit
        ],
        "receivers": [
            {
                "name": "pagerduty",
                "pagerduty_configs": [
                    {
                        "routing_key": routing_key,
                        "url": pagerduty_url,
                        "send_resolved": True,
                        "severity": "critical",
                        "client": "cqox-platform",
                    }
                ],
            },
            {"name": "tickets", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]},
            # A resolved Watchdog means the heartbeat stopped: the snitch service notices that by itself.
            {"name": HEARTBEAT_RECEIVER, "webhook_configs": [{"url": heartbeat_url, "send_resolved": False}]},
        ],
    }
    return "# Rendered by the alertmanager_config asset from cqox_platform/alerts/routing.yaml.\n" + yaml.safe_dump(
        config, sort_keys=False
    )


@dataclass
class ValidatedRouting:
    text: str
    cases: list[RouteCase] = field(default_factory=list)
    tree: str = ""


def _amtool(args: list[str], secrets: tuple[str, ...]) -> subprocess.CompletedProcess:
    result = subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)
    for secret in secrets:
        result.stdout = result.stdout.replace(secret, "<redacted>")
        result.stderr = result.stderr.replace(secret, "<redacted>")
    return result


def validate(spec: RoutingSpec, text: str, secrets: tuple[str, ...]) -> ValidatedRouting:
    """``amtool check-config`` and every route case; raises ``RoutingError`` naming the first failure."""
    cases = route_cases(spec)
    with tempfile.TemporaryDirectory(prefix="cqox-am-") as tmp:  # created 0700
        path = Path(tmp) / "alertmanager.yml"
        path.write_text(text)
        checked = _amtool(["check-config", str(path)], secrets)
        if checked.returncode != 0:
            raise RoutingError(f"amtool check-config rejected the rendered routing: {checked.stdout}{checked.stderr}")
        for case in cases:
            labels = [f"{k}={v}" for k, v in sorted(case.labels.items())]
            expect = f"--verify.receivers={','.join(case.receivers)}"
            tested = _amtool(["config", "routes", "test", f"--config.file={path}", expect, *labels], secrets)
            if tested.returncode != 0:
                raise RoutingError(
                    f"route test failed for {' '.join(labels)} ({case.origin}): expected {list(case.receivers)}, "
                    f"amtool: {(tested.stdout + tested.stderr).strip()}"
                )
        tree = _amtool(["config", "routes", "show", f"--config.file={path}"], secrets).stdout
    return ValidatedRouting(text, cases, tree)


def install(client: AlertmanagerClient, config_file: Path, text: str) -> None:
    """Write the routing file Alertmanager loads (0600: it holds the routing key) and reload it.

    Should Alertmanager still refuse it, the previous file is put back and reloaded, so a bad render never
    leaves the next restart without routing.
    """
    previous = config_file.read_bytes() if config_file.exists() else None
    _write_atomic(config_file, text.encode())
    try:
        client.reload()
    except AlertmanagerError:
        if previous is not None:
            _write_atomic(config_file, previous)
            client.reload()
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def loaded_receivers(client: AlertmanagerClient) -> list[str]:
    """The receivers of the configuration Alertmanager runs now (its status shows secrets as ``<secret>``)."""
    original = yaml.safe_load(client.status()["config"]["original"])
    return sorted(r["name"] for r in original.get("receivers", []))
