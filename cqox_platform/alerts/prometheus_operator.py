"""The shipped alert rules and routing as Prometheus-operator objects, for clusters that run the operator.

On the local stack, rule files are written into Prometheus's rules directory and the routing into Alertmanager's
file, each followed by ``/-/reload``; a run pod in a cluster can do neither. There the operator reads
``PrometheusRule`` (monitoring.coreos.com/v1) and ``AlertmanagerConfig`` (monitoring.coreos.com/v1alpha1) objects.
They are rendered here from the same sources the local stack loads, so the two cannot drift:

- one ``PrometheusRule`` per rule file: the service alerts, the platform alerts, the backup alerts, and the SLO
  burn-rate rules generated from the SLO spec (``cqox_platform.slo.rules``);
- one ``AlertmanagerConfig`` from ``routing.yaml``: the same grouping, timing, severity routes and inhibition as
  ``routing.render``. Its receivers name Secret keys instead of values (the operator reads them from the Secret
  ``cqox-alerting`` in the object's namespace: ``pagerduty-routing-key``, the PagerDuty integration key kept in
  Vault at ``secret/cqox/alerting/pagerduty``, and ``webhook-url``), so no secret is in the object. PagerDuty's
  URL is Alertmanager's default, the Events API v2.

The operator adds a ``namespace`` matcher to an ``AlertmanagerConfig``'s routes unless the Alertmanager uses it
as its global configuration (``spec.alertmanagerConfiguration.name: cqox-platform``); the platform's alerts
come from services in several namespaces, so that is how it is meant to be selected.

``promtool_test`` checks the rules an object holds with ``promtool check rules`` and runs the promtool unit tests
of its source against them, so what the cluster loads is what was tested.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cqox_platform.alerts import (
    ALERT_RULE_TESTS,
    BACKUP_ALERT_RULE_TESTS,
    BACKUP_ALERT_RULES,
    PLATFORM_ALERT_RULES,
    SERVICE_ALERT_RULE_TESTS,
    SERVICE_ALERT_RULES,
)
from cqox_platform.alerts.routing import HEARTBEAT_RECEIVER, RoutingSpec
from cqox_platform.alerts.rules import AlertRulesError, check_and_test
from cqox_platform.slo.rules import generate_rule_tests, generate_rules
from cqox_platform.slo.spec import SloSpec

API_VERSION_RULES = "monitoring.coreos.com/v1"
API_VERSION_ROUTING = "monitoring.coreos.com/v1alpha1"
ROUTING_NAME = "cqox-platform"
#: The Secret the AlertmanagerConfig's receivers read, and its keys.
ALERTING_SECRET = "cqox-alerting"
PAGERDUTY_KEY = "pagerduty-routing-key"
WEBHOOK_KEY = "webhook-url"
#: The dead man's switch service's URL (the always-firing Watchdog goes there; silence pages).
HEARTBEAT_KEY = "heartbeat-url"
LABELS = {"app.kubernetes.io/part-of": "cqox-platform", "app.kubernetes.io/component": "alerting"}


@dataclass(frozen=True)
class RuleSource:
    """One rule file the platform ships: the object's name, its groups, and the promtool tests written for it."""

    name: str
    groups: list[dict[str, Any]]
    #: A promtool test file's content whose ``rule_files`` is rewritten to the object's rules; None: none exist.
    tests: dict[str, Any] | None
    origin: str


def _file_source(name: str, rules: Path, tests: Path | None) -> RuleSource:
    groups = yaml.safe_load(rules.read_text())["groups"]
    return RuleSource(name, groups, yaml.safe_load(tests.read_text()) if tests else None, rules.name)


def rule_sources(slo_spec: SloSpec) -> list[RuleSource]:
    """Every alert rule file the platform ships, in the order the local stack loads them."""
    slo_rules = generate_rules(slo_spec)
    return [
        _file_source("cqox-service-alerts", SERVICE_ALERT_RULES, SERVICE_ALERT_RULE_TESTS),
        _file_source("cqox-platform-alerts", PLATFORM_ALERT_RULES, ALERT_RULE_TESTS),
        _file_source("cqox-backup-alerts", BACKUP_ALERT_RULES, BACKUP_ALERT_RULE_TESTS),
        RuleSource(
            "cqox-slo-rules",
            slo_rules["groups"],
            generate_rule_tests(slo_spec, "cqox-slo-rules.yml"),
            f"SLO spec of {slo_spec.service}",
        ),
    ]


def prometheus_rule(source: RuleSource, namespace: str) -> dict[str, Any]:
    """The ``PrometheusRule`` holding one rule file's groups as they are."""
    return {
        "apiVersion": API_VERSION_RULES,
        "kind": "PrometheusRule",
        "metadata": {"name": source.name, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {"groups": copy.deepcopy(source.groups)},
    }


def prometheus_rules(slo_spec: SloSpec, namespace: str) -> list[dict[str, Any]]:
    return [prometheus_rule(source, namespace) for source in rule_sources(slo_spec)]


def _matchers(labels: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"name": str(k), "value": str(v), "matchType": "="} for k, v in labels.items()]


def alertmanager_config(spec: RoutingSpec, namespace: str) -> dict[str, Any]:
    """The ``AlertmanagerConfig`` of ``routing.yaml``: what ``routing.render`` gives Alertmanager's own file."""
    timing = {"group_wait": "groupWait", "group_interval": "groupInterval", "repeat_interval": "repeatInterval"}
    unknown = set(spec.timing) - set(timing)
    if unknown:
        raise ValueError(f"routing.yaml timing has {sorted(unknown)}; AlertmanagerConfig knows {sorted(timing)}")
    return {
        "apiVersion": API_VERSION_ROUTING,
        "kind": "AlertmanagerConfig",
        "metadata": {"name": ROUTING_NAME, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {
            "route": {
                "receiver": spec.default_receiver,
                "groupBy": list(spec.group_by),
                **{timing[k]: v for k, v in spec.timing.items()},
                "routes": [
                    {
                        "receiver": HEARTBEAT_RECEIVER,
                        "matchers": _matchers({"alertname": spec.heartbeat.alertname}),
                        "groupBy": ["alertname"],
                        **{timing[k]: v for k, v in spec.heartbeat.timing().items()},
                    },
                    *(
                        {"receiver": receiver, "matchers": _matchers({"severity": severity})}
                        for severity, receiver in spec.routes
                    ),
                ],
            },
            "inhibitRules": [
                {
                    "sourceMatch": _matchers(rule["source"]),
                    "targetMatch": _matchers(rule["target"]),
                    "equal": list(rule["equal"]),
                }
                for rule in spec.inhibit
            ],
            "receivers": [
                {
                    "name": "pagerduty",
                    "pagerdutyConfigs": [
                        {
                            "routingKey": {"name": ALERTING_SECRET, "key": PAGERDUTY_KEY},
                            "sendResolved": True,
                            "severity": "critical",
                            "client": "cqox-platform",
                        }
                    ],
                },
                {
                    "name": "tickets",
                    "webhookConfigs": [
                        {"urlSecret": {"name": ALERTING_SECRET, "key": WEBHOOK_KEY}, "sendResolved": True}
                    ],
                },
                {
                    "name": HEARTBEAT_RECEIVER,
                    "webhookConfigs": [
                        {"urlSecret": {"name": ALERTING_SECRET, "key": HEARTBEAT_KEY}, "sendResolved": False}
                    ],
                },
            ],
        },
    }


def promtool_test(objects: Sequence[Mapping[str, Any]], sources: Sequence[RuleSource]) -> dict[str, str]:
    """``promtool check rules`` on each object's groups and its source's unit tests against them.

    ``objects`` may be the rendered ones or live ones read back from the API server. Returns promtool's summary
    per object; raises ``AlertRulesError`` with promtool's words when a check or a test fails.
    """
    by_name = {source.name: source for source in sources}
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cqox-promrule-") as tmp:
        for obj in objects:
            name = obj["metadata"]["name"]
            if name not in by_name:
                raise AlertRulesError(f"PrometheusRule {name} comes from no shipped rule file: {sorted(by_name)}")
            rules = Path(tmp) / f"{name}.yml"
            rules.write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}, sort_keys=False, width=200))
            tests = None
            if by_name[name].tests is not None:
                tests = Path(tmp) / f"{name}.test.yml"
                tests.write_text(yaml.safe_dump({**by_name[name].tests, "rule_files": [rules.name]}, sort_keys=False))
            checked = check_and_test(rules, tests)
            results[name] = "; ".join(filter(None, (checked.check_output, checked.test_output)))
    return results
