"""PrometheusRule and AlertmanagerConfig rendered from the sources the local stack loads, valid for the operator's
CRDs as the stack installs them, and tested by promtool."""

from __future__ import annotations

import copy

import pytest
import yaml
from jsonschema import Draft7Validator

from cqox_platform.alerts import BACKUP_ALERT_RULES, PLATFORM_ALERT_RULES, SERVICE_ALERT_RULES
from cqox_platform.alerts.prometheus_operator import (
    ALERTING_SECRET,
    alertmanager_config,
    prometheus_rules,
    promtool_test,
    rule_sources,
)
from cqox_platform.alerts.routing import load_spec as load_routing_spec
from cqox_platform.alerts.routing import render
from cqox_platform.alerts.rules import AlertRulesError
from cqox_platform.slo.rules import generate_rules
from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec
from cqox_platform.stack.kube.build import CRDS_DIR
from cqox_platform.stack.kube.crds import load_crds

SLO_SPEC = load_spec(DEFAULT_SPEC)


def _crd_schema(kind: str) -> Draft7Validator:
    (crd,) = [c for c in load_crds(CRDS_DIR) if c["spec"]["names"]["kind"] == kind]
    (version,) = crd["spec"]["versions"]
    return Draft7Validator(version["schema"]["openAPIV3Schema"])


def test_every_shipped_rule_group_is_in_exactly_one_prometheus_rule():
    objects = prometheus_rules(SLO_SPEC, "cqox")
    shipped = [
        *(yaml.safe_load(path.read_text())["groups"] for path in (SERVICE_ALERT_RULES, PLATFORM_ALERT_RULES)),
        yaml.safe_load(BACKUP_ALERT_RULES.read_text())["groups"],
        generate_rules(SLO_SPEC)["groups"],
    ]
    assert [o["spec"]["groups"] for o in objects] == shipped
    assert all(o["metadata"]["namespace"] == "cqox" for o in objects)
    assert len({o["metadata"]["name"] for o in objects}) == len(objects)


def test_rendered_objects_are_valid_for_the_crds_the_stack_installs():
    rules = _crd_schema("PrometheusRule")
    for obj in prometheus_rules(SLO_SPEC, "cqox"):
        assert list(rules.iter_errors(obj)) == [], obj["metadata"]["name"]
    routing = _crd_schema("AlertmanagerConfig")
    assert list(routing.iter_errors(alertmanager_config(load_routing_spec(), "cqox"))) == []


def test_the_crd_schema_refuses_a_malformed_duration():
    obj = prometheus_rules(SLO_SPEC, "cqox")[0]
    obj["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    assert list(_crd_schema("PrometheusRule").iter_errors(obj))


def test_promtool_checks_and_unit_tests_the_rules_in_the_objects():
    sources = rule_sources(SLO_SPEC)
    results = promtool_test(prometheus_rules(SLO_SPEC, "cqox"), sources)
    assert set(results) == {s.name for s in sources}
    tested = [s.name for s in sources if s.tests is not None]
    assert tested == ["cqox-service-alerts", "cqox-platform-alerts", "cqox-backup-alerts", "cqox-slo-rules"]
    assert all("SUCCESS" in results[name] for name in tested), results


def test_promtool_fails_on_a_rule_the_object_broke():
    objects = prometheus_rules(SLO_SPEC, "cqox")
    broken = copy.deepcopy(objects[1])
    broken["spec"]["groups"][0]["rules"][0]["expr"] = "up =="
    with pytest.raises(AlertRulesError, match="promtool check rules"):
        promtool_test([broken], rule_sources(SLO_SPEC))


def test_alertmanager_config_routes_as_the_local_alertmanager_file_does():
    spec = load_routing_spec()
    obj = alertmanager_config(spec, "cqox")["spec"]
    local = yaml.safe_load(
        render(
            spec,
            pagerduty_url="https://pd.invalid",
            routing_key="k",
            webhook_url="https://w",
            heartbeat_url="https://h",
        )
    )
    route = local["route"]
    assert obj["route"]["receiver"] == route["receiver"]
    assert obj["route"]["groupBy"] == route["group_by"]
    assert (obj["route"]["groupWait"], obj["route"]["groupInterval"], obj["route"]["repeatInterval"]) == (
        route["group_wait"],
        route["group_interval"],
        route["repeat_interval"],
    )
    as_matchers = [
        ([f'{m["name"]}="{m["value"]}"' for m in r["matchers"]], r["receiver"]) for r in obj["route"]["routes"]
    ]
    assert as_matchers == [(r["matchers"], r["receiver"]) for r in route["routes"]]
    inhibit = [
        {
            "source_matchers": [f'{m["name"]}="{m["value"]}"' for m in rule["sourceMatch"]],
            "target_matchers": [f'{m["name"]}="{m["value"]}"' for m in rule["targetMatch"]],
            "equal": rule["equal"],
        }
        for rule in obj["inhibitRules"]
    ]
    assert inhibit == local["inhibit_rules"]
    assert sorted(r["name"] for r in obj["receivers"]) == sorted(r["name"] for r in local["receivers"])


def test_alertmanager_config_names_secret_keys_never_values():
    obj = alertmanager_config(load_routing_spec(), "cqox")
    (pagerduty,) = next(r for r in obj["spec"]["receivers"] if r["name"] == "pagerduty")["pagerdutyConfigs"]
    (webhook,) = next(r for r in obj["spec"]["receivers"] if r["name"] == "tickets")["webhookConfigs"]
    assert pagerduty["routingKey"]["name"] == webhook["urlSecret"]["name"] == ALERTING_SECRET
    assert "url" not in webhook
