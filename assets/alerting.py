"""Alerting as an asset (group ``alerting``): Alertmanager's routing rendered from the repository, checked with
amtool, route-tested for every severity and alert family, then loaded with ``/-/reload``.

The PagerDuty routing key is read from Vault KV at render time and goes only into the routing file Alertmanager
loads (0600); metadata shows the receivers' endpoints by host and the key's Vault path, never the key.
"""

from urllib.parse import urlparse

import dagster as dg

from assets.metadata import column, table
from cqox_platform.alerts import (
    ALERT_RULE_TESTS,
    PLATFORM_ALERT_RULES,
    ROUTING_SPEC,
    SERVICE_ALERT_RULE_TESTS,
    SERVICE_ALERT_RULES,
)
from cqox_platform.alerts.routing import (
    PAGERDUTY_FIELD,
    PAGERDUTY_SECRET,
    load_spec,
    loaded_receivers,
    render,
    validate,
)
from cqox_platform.alerts.rules import check_and_test
from cqox_platform.errors import VaultNotFoundError
from cqox_platform.resources.alertmanager import AlertmanagerResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.resources.vault import VaultResource
from cqox_platform.settings import get_settings

GROUP = "alerting"


def _routing_key(vault: VaultResource) -> str:
    try:
        key = vault.read_secret(PAGERDUTY_SECRET).get(PAGERDUTY_FIELD)
    except VaultNotFoundError:
        key = None
    if not key:
        raise dg.Failure(
            f"no PagerDuty routing key in Vault at secret/{PAGERDUTY_SECRET} (field {PAGERDUTY_FIELD}): write the "
            f"integration key of your PagerDuty service there (`bao kv put secret/{PAGERDUTY_SECRET} "
            f"{PAGERDUTY_FIELD}=...`); on the local stack materialize vault_config, which stores the receiver's."
        )
    return key


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    deps=[dg.AssetKey("vault_config")],
    description="Alertmanager routing from cqox_platform/alerts/routing.yaml: page -> PagerDuty (Events v2, key "
    "from Vault), ticket -> webhook, the always-firing Watchdog -> the dead man's switch (heartbeat URL), grouped "
    "by service and alert family, a page inhibiting its SLO's ticket; "
    "checked with amtool check-config and amtool route tests, then loaded with /-/reload.",
)
def alertmanager_config(
    context: dg.AssetExecutionContext, alertmanager: AlertmanagerResource, vault: VaultResource
) -> dg.MaterializeResult:
    settings = get_settings()
    spec = load_spec()
    routing_key = _routing_key(vault)
    webhook_url = settings.require("alert_webhook_url")
    # No routing without its dead man's switch: a stack whose Prometheus or Alertmanager died would page nobody.
    heartbeat_url = settings.require("alert_heartbeat_url")
    text = render(
        spec,
        pagerduty_url=settings.pagerduty_events_url,
        routing_key=routing_key,
        webhook_url=webhook_url,
        heartbeat_url=heartbeat_url,
    )
    validated = validate(spec, text, secrets=(routing_key, webhook_url, heartbeat_url))
    context.log.info(f"amtool: configuration valid; {len(validated.cases)} route tests passed")
    alertmanager.install_config(text)
    receivers = loaded_receivers(alertmanager.client())
    context.log.info(f"Alertmanager at {alertmanager.url} reloaded; receivers {receivers}")
    endpoints = {
        "pagerduty": f"PagerDuty Events v2 at {urlparse(settings.pagerduty_events_url).netloc} "
        f"(key: Vault secret/{PAGERDUTY_SECRET})",
        "tickets": f"webhook at {urlparse(webhook_url).netloc}",
        "heartbeat": f"dead man's switch at {urlparse(heartbeat_url).netloc} (Watchdog every "
        f"{spec.heartbeat.period_seconds:.0f} s; it must page after {spec.heartbeat.expect_within})",
    }
    return dg.MaterializeResult(
        metadata={
            "spec": str(ROUTING_SPEC),
            "alertmanager": alertmanager.url,
            "group_by": dg.MetadataValue.json(list(spec.group_by)),
            "routes": table(
                [
                    column("match", description="the labels a route takes (severity, or the Watchdog's alertname)"),
                    column("receiver"),
                    column("endpoint", description="where the receiver sends (host only; keys stay in Vault)"),
                ],
                [
                    [f"alertname={spec.heartbeat.alertname}", "heartbeat", endpoints["heartbeat"]],
                    *[[f"severity={s}", r, endpoints[r]] for s, r in spec.routes],
                    ["(any other)", spec.default_receiver, "default route"],
                ],
            ),
            "inhibit_rules": table(
                [
                    column("source", description="the alert that mutes"),
                    column("target", description="the alerts it mutes"),
                    column("equal", description="labels both must share"),
                ],
                [[rule["source"], rule["target"], ", ".join(rule["equal"])] for rule in spec.inhibit],
            ),
            "route_tests": table(
                [
                    column("labels"),
                    column("expected receiver"),
                    column("from", description="where the case comes from (severity, alert rule file)"),
                ],
                [
                    [", ".join(f"{k}={v}" for k, v in sorted(c.labels.items())), ", ".join(c.receivers), c.origin]
                    for c in validated.cases
                ],
            ),
            "route_tests_passed": len(validated.cases),
            "routing_tree": dg.MetadataValue.md(f"```\n{validated.tree}```"),
            "loaded_receivers": dg.MetadataValue.json(receivers),
        }
    )


#: Each shipped rule file, its promtool unit tests, and the name it is installed under in Prometheus's rules dir.
PLATFORM_RULE_FILES = (
    (PLATFORM_ALERT_RULES, ALERT_RULE_TESTS, "cqox-platform-alerts.yml"),
    (SERVICE_ALERT_RULES, SERVICE_ALERT_RULE_TESTS, "cqox-service-alerts.yml"),
)


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Alerts on the platform itself and on stale pushed gauges (cqox_platform/alerts/platform-alerts.yml):"
    " the Dagster daemon's heartbeat, backup and SLO gauges no longer pushed; and on the services from what "
    "Prometheus scrapes (service-alerts.yml): archiver failing, replica lag, Patroni leaders and failover, etcd "
    "quorum, OpenBao sealed, certificate expiry, targets down. Every file is checked and unit-tested with promtool "
    "before any is loaded into Prometheus.",
)
def platform_alert_rules(context: dg.AssetExecutionContext, prometheus: PrometheusResource) -> dg.MaterializeResult:
    checked = {installed: check_and_test(rules, tests) for rules, tests, installed in PLATFORM_RULE_FILES}
    for installed, result in checked.items():
        context.log.info(f"{installed}: {result.check_output}; promtool test rules: {result.test_output}")
    groups: list[str] = []
    for rules, _tests, installed in PLATFORM_RULE_FILES:
        groups = prometheus.install_rules(installed, rules.read_text())  # every group loaded after the reload
    return dg.MaterializeResult(
        metadata={
            "file": str(PLATFORM_ALERT_RULES),
            "tests": str(ALERT_RULE_TESTS),
            "service_file": str(SERVICE_ALERT_RULES),
            "service_tests": str(SERVICE_ALERT_RULE_TESTS),
            "promtool": "\n".join(f"{name}: {c.check_output}" for name, c in checked.items()),
            "promtool_tests": "\n".join(f"{name}: {c.test_output}" for name, c in checked.items()),
            "loaded_groups": dg.MetadataValue.json(groups),
        }
    )


defs = dg.Definitions(assets=[alertmanager_config, platform_alert_rules])
