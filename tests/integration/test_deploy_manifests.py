"""The ``deploy`` assets on the real API server: apply, idempotence, the drift check, runtime-owned fields."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
from kubernetes import client as k8s

from assets.deploy import MANIFEST_ASSETS, deploy_assets, deploy_checks
from cqox_platform.deploy.manifests import MANIFEST_DIR, render
from cqox_platform.resources.kubernetes import KubernetesInvalidError, KubernetesResource
from cqox_platform.stack import Stack
from tests.helpers import table_rows

ALL_DEFS = [*deploy_assets, *deploy_checks]


@pytest.fixture(scope="module")
def kube(stack: Stack) -> Iterator[KubernetesResource]:
    resource = KubernetesResource(kubeconfig=stack.env()["CQOX_KUBECONFIG"])
    yield resource
    resource.close()


@pytest.fixture
def target(kube: KubernetesResource) -> Iterator[dict]:
    """A namespace of its own (the e2e main job uses `cqox`) and an instance to remember materializations."""
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    instance = dg.DagsterInstance.ephemeral()
    yield {"namespace": namespace, "instance": instance}
    kube.call(f"deleting {namespace}", lambda: kube.core().delete_namespace(namespace))
    instance.dispose()


def _run_config(namespace: str) -> dict:
    return {"ops": {spec.name: {"config": {"namespace": namespace}} for spec in MANIFEST_ASSETS}}


def _check(name: str) -> dg.AssetChecksDefinition:
    return next(c for c in deploy_checks if any(k.asset_key.path == [name] for k in c.check_keys))


def _run_check(kube, target, asset: str) -> dg.AssetCheckEvaluation:
    result = dg.materialize(
        ALL_DEFS,
        resources={"kubernetes": kube},
        instance=target["instance"],
        selection=dg.AssetSelection.checks(_check(asset)),
        raise_on_error=False,
    )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }


def _apply_assets(kube, target, *names: str) -> dict[str, dict]:
    result = dg.materialize(
        ALL_DEFS,
        resources={"kubernetes": kube},
        instance=target["instance"],
        run_config={"ops": {n: {"config": {"namespace": target["namespace"]}} for n in names}},
        selection=list(names),
        raise_on_error=False,
    )
    assert result.success
    return _materializations(result)


def _apply_all(kube, target) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        ALL_DEFS,
        resources={"kubernetes": kube},
        instance=target["instance"],
        run_config=_run_config(target["namespace"]),
        raise_on_error=False,
    )
    assert result.success
    return result


def test_manifests_apply_record_their_objects_and_pass_the_drift_check(kube, target):
    ns = target["namespace"]
    result = _apply_all(kube, target)
    meta = _materializations(result)
    assert set(meta) == {spec.name for spec in MANIFEST_ASSETS}
    values = {"NAMESPACE": ns, "ENGINE_IMAGE": "i", "POSTGRES_IMAGE": "p"}
    expected = {spec.name: len(spec.manifests(values)) for spec in MANIFEST_ASSETS}
    for name, md in meta.items():
        assert md["created"].value == expected[name], name
        assert md["field_manager"].value == "cqox-platform"
        for obj in md["applied"].value:
            assert obj["kind"] and obj["name"] and obj["resourceVersion"]
            assert obj["action"] == "created"
    hpa = meta["k8s_engine_hpa"]["applied"].value[0]
    assert (hpa["kind"], hpa["name"], hpa["namespace"]) == ("HorizontalPodAutoscaler", "cqox-engine", ns)
    stable = meta["k8s_engine_workloads"]["applied"].value[0]
    assert (stable["kind"], stable["name"], stable["generation"]) == ("Deployment", "cqox-engine", 1)
    checks = result.get_asset_check_evaluations()
    assert {(c.asset_key.path[-1], c.check_name) for c in checks} == {
        (spec.name, "manifests_in_sync") for spec in MANIFEST_ASSETS
    }
    assert all(c.passed for c in checks), [c.description for c in checks if not c.passed]

    # What the API server holds is what the roadmap asks for.
    live_hpa = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "cqox-engine", ns)
    assert (live_hpa["spec"]["minReplicas"], live_hpa["spec"]["maxReplicas"]) == (3, 10)
    assert live_hpa["spec"]["behavior"]["scaleDown"]["policies"]  # a server default, not drift
    pg = kube.get("postgresql.cnpg.io/v1", "Cluster", "cqox-postgres-cluster", ns)
    assert pg["spec"]["instances"] == 3
    assert pg["spec"]["plugins"][0]["parameters"]["barmanObjectName"] == "cqox-postgres-backups"
    store = kube.get("barmancloud.cnpg.io/v1", "ObjectStore", "cqox-postgres-backups", ns)
    assert store["spec"]["configuration"]["destinationPath"] == "s3://cqox-backups-dr/postgres/"
    nightly = kube.get("postgresql.cnpg.io/v1", "ScheduledBackup", "cqox-postgres-daily", ns)
    assert (nightly["spec"]["schedule"], nightly["spec"]["method"]) == ("0 0 3 * * *", "plugin")
    assert kube.get("security.istio.io/v1", "PeerAuthentication", "default", ns)["spec"]["mtls"]["mode"] == "STRICT"
    vs = kube.get_custom("networking.istio.io", "v1", "virtualservices", "cqox-engine", ns)
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
    assert [(r["destination"]["subset"], r["weight"]) for r in primary["route"]] == [("v1", 100), ("v2", 0)]

    # Again: server-side apply changes nothing.
    again = _materializations(_apply_all(kube, target))
    for name, md in again.items():
        assert (md["created"].value, md["updated"].value) == (0, 0), name
        assert md["unchanged"].value == expected[name]
        assert md["changed_fields"].value == 0 and "diff" not in md, name


def test_a_hand_edit_fails_the_check_and_rematerializing_repairs_it(kube, target):
    ns = target["namespace"]
    _apply_all(kube, target)
    autoscaling = k8s.AutoscalingV2Api(kube.api_client())
    kube.call(
        "editing the HPA by hand",
        lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
            "cqox-engine", ns, {"spec": {"maxReplicas": 20}}, field_manager="kubectl-edit"
        ),
    )

    failed = _run_check(kube, target, "k8s_engine_hpa")
    assert not failed.passed
    assert f"HorizontalPodAutoscaler/{ns}/cqox-engine: spec.maxReplicas" in failed.description
    assert failed.metadata["drifted_paths"].value == [f"HorizontalPodAutoscaler/{ns}/cqox-engine: spec.maxReplicas"]
    (difference,) = table_rows(failed.metadata["differences"].value)
    assert difference == {
        "object": f"HorizontalPodAutoscaler/{ns}/cqox-engine",
        "field": "spec.maxReplicas",
        "desired": "10",
        "live": "20",
    }
    assert _run_check(kube, target, "k8s_engine_workloads").passed  # the others are unaffected

    repaired = _apply_assets(kube, target, "k8s_engine_hpa")["k8s_engine_hpa"]
    applied, canary_hpa = repaired["applied"].value
    assert (applied["name"], applied["action"]) == ("cqox-engine", "updated")
    assert applied["changed_paths"] == ["spec.maxReplicas"]
    assert (canary_hpa["name"], canary_hpa["action"]) == ("cqox-engine-canary", "unchanged")
    assert [(r["field"], r["was"], r["now"]) for r in table_rows(repaired["diff"].value)] == [
        ("spec.maxReplicas", "20", "10")
    ]
    live = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "cqox-engine", ns)
    assert live["spec"]["maxReplicas"] == 10
    assert _run_check(kube, target, "k8s_engine_hpa").passed


def test_deleted_objects_fail_the_check_and_come_back(kube, target):
    ns = target["namespace"]
    _apply_all(kube, target)
    kube.call(
        "deleting the PeerAuthentication",
        lambda: kube.custom().delete_namespaced_custom_object(
            "security.istio.io", "v1", ns, "peerauthentications", "default"
        ),
    )
    failed = _run_check(kube, target, "k8s_istio_mtls")
    assert not failed.passed
    assert f"PeerAuthentication/{ns}/default is missing" in failed.description
    restored = _apply_assets(kube, target, "k8s_istio_mtls")["k8s_istio_mtls"]
    assert [o["action"] for o in restored["applied"].value] == ["created", "unchanged"]
    assert _run_check(kube, target, "k8s_istio_mtls").passed


def test_the_canary_routers_weights_and_image_survive_a_reapply(kube, target):
    """Weights and the canary's image are runtime-owned: neither drift nor reset by the next materialization."""
    ns = target["namespace"]
    _apply_all(kube, target)
    vs = kube.get_custom("networking.istio.io", "v1", "virtualservices", "cqox-engine", ns)
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
    primary["route"][0]["weight"], primary["route"][1]["weight"] = 90, 10
    kube.replace_custom("networking.istio.io", "v1", "virtualservices", vs, ns)  # as the router does
    kube.call(
        "setting the canary image",
        lambda: kube.apps().patch_namespaced_deployment(
            "cqox-engine-canary",
            ns,
            {"spec": {"template": {"spec": {"containers": [{"name": "cqox-engine", "image": "cqox/engine:2.0.0"}]}}}},
            field_manager="cqox-canary",
        ),
    )
    assert _run_check(kube, target, "k8s_engine_traffic").passed
    assert _run_check(kube, target, "k8s_engine_workloads").passed

    # A field nobody else owns still counts: the engine's DestinationRule losing ISTIO_MUTUAL is drift.
    kube.call(
        "weakening the DestinationRule",
        lambda: kube.custom().patch_namespaced_custom_object(
            "networking.istio.io",
            "v1",
            ns,
            "destinationrules",
            "cqox-engine",
            {"spec": {"trafficPolicy": {"tls": {"mode": "DISABLE"}}}},
        ),
    )
    failed = _run_check(kube, target, "k8s_engine_traffic")
    assert not failed.passed
    assert "spec.trafficPolicy.tls.mode" in failed.description

    md = _apply_assets(kube, target, "k8s_engine_traffic", "k8s_engine_workloads")
    assert [o["changed_paths"] for o in md["k8s_engine_traffic"]["applied"].value] == [
        ["spec.trafficPolicy.tls.mode"],
        [],
    ]
    vs = kube.get_custom("networking.istio.io", "v1", "virtualservices", "cqox-engine", ns)
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
    assert [r["weight"] for r in primary["route"]] == [90, 10]
    canary = kube.get("apps/v1", "Deployment", "cqox-engine-canary", ns)
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "cqox/engine:2.0.0"
    dr = kube.get_custom("networking.istio.io", "v1", "destinationrules", "cqox-engine", ns)
    assert dr["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert _run_check(kube, target, "k8s_engine_traffic").passed


def test_a_promotion_to_stable_is_neither_drift_nor_undone_by_a_reapply(kube, target):
    """Issue 16 item 1: promotion gives the stable Deployment the canary's image and resources and scales the
    canary to 0; the manifests mark those fields runtime-owned, so the drift check passes and the next apply
    does not put stable back on the old image (as Flagger owns its primary's template)."""
    ns = target["namespace"]
    _apply_all(kube, target)
    apps = kube.apps()
    promoted = {"name": "cqox-engine", "image": "cqox/engine:2.0.0", "resources": {"requests": {"cpu": "750m"}}}
    kube.call(
        "promoting",
        lambda: apps.patch_namespaced_deployment(
            "cqox-engine", ns, {"spec": {"template": {"spec": {"containers": [promoted]}}}}, field_manager="cqox-canary"
        ),
    )
    kube.call(
        "scaling the canary down",
        lambda: apps.patch_namespaced_deployment(
            "cqox-engine-canary", ns, {"spec": {"replicas": 0}}, field_manager="cqox-canary"
        ),
    )
    assert _run_check(kube, target, "k8s_engine_workloads").passed
    _apply_assets(kube, target, "k8s_engine_workloads")
    stable = kube.get("apps/v1", "Deployment", "cqox-engine", ns)
    container = stable["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "cqox/engine:2.0.0" and container["resources"]["requests"]["cpu"] == "750m"
    assert kube.get("apps/v1", "Deployment", "cqox-engine-canary", ns)["spec"]["replicas"] == 0


def test_the_canary_hpa_is_accepted_its_rollout_floor_kept_and_a_hand_edit_is_drift(kube, target):
    """Issue 16 item 5: the canary's HPA (min 1, max as stable's) is accepted by the API server and checked by
    `manifests_in_sync`; the floor a rollout raised (`set_hpa_floor`, what following stable does) is runtime-owned,
    so it is not drift and a re-apply keeps it, while a hand edit of its ceiling fails the check and is repaired."""
    from cqox_platform.canary.promotion import set_hpa_floor

    ns = target["namespace"]
    meta = _apply_assets(kube, target, "k8s_namespace", "k8s_engine_workloads", "k8s_engine_hpa")
    applied = {(o["kind"], o["name"]) for o in meta["k8s_engine_hpa"]["applied"].value}
    assert ("HorizontalPodAutoscaler", "cqox-engine-canary") in applied
    live = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "cqox-engine-canary", ns)
    assert live["spec"]["scaleTargetRef"]["name"] == "cqox-engine-canary"
    assert (live["spec"]["minReplicas"], live["spec"]["maxReplicas"]) == (1, 10)
    assert _run_check(kube, target, "k8s_engine_hpa").passed

    assert set_hpa_floor(kube, ns, "cqox-engine-canary", 5) == (1, 5)
    assert _run_check(kube, target, "k8s_engine_hpa").passed
    again = _apply_assets(kube, target, "k8s_engine_hpa")["k8s_engine_hpa"]
    assert again["updated"].value == 0
    assert kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "cqox-engine-canary", ns)["spec"]["minReplicas"] == 5

    autoscaling = kube.autoscaling()
    kube.call(
        "editing the canary HPA by hand",
        lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
            "cqox-engine-canary", ns, {"spec": {"maxReplicas": 8}}, field_manager="kubectl-edit"
        ),
    )
    failed = _run_check(kube, target, "k8s_engine_hpa")
    assert not failed.passed
    assert failed.metadata["drifted_paths"].value == [
        "HorizontalPodAutoscaler/" + ns + "/cqox-engine-canary: spec.maxReplicas"
    ]
    _apply_assets(kube, target, "k8s_engine_hpa")
    live = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "cqox-engine-canary", ns)
    assert (live["spec"]["minReplicas"], live["spec"]["maxReplicas"]) == (5, 10)
    assert _run_check(kube, target, "k8s_engine_hpa").passed


def test_the_cluster_crd_rejects_a_cluster_without_instances(kube, target):
    ns = target["namespace"]
    _apply_assets(kube, target, "k8s_namespace")
    store, cluster, scheduled = render(MANIFEST_DIR / "postgres-cluster.yaml", {"NAMESPACE": ns, "POSTGRES_IMAGE": "p"})
    cluster["spec"]["instances"] = 0
    with pytest.raises(KubernetesInvalidError, match="should be greater than or equal to 1"):
        kube.apply(cluster)
    store["spec"]["retentionPolicy"] = "30 days"
    with pytest.raises(KubernetesInvalidError, match="retentionPolicy"):
        kube.apply(store)
    scheduled["spec"]["schedule"] = "0 3 * * *"  # five fields: CloudNativePG would read it as minute 3, every hour
    with pytest.raises(KubernetesInvalidError, match="schedule"):
        kube.apply(scheduled)


def test_the_drift_check_covers_the_object_store_and_the_scheduled_backup(kube, target):
    ns = target["namespace"]
    _apply_assets(kube, target, "k8s_namespace", "k8s_postgres_cluster")
    assert _run_check(kube, target, "k8s_postgres_cluster").passed
    for group, plural, name, field, value in (
        ("postgresql.cnpg.io", "scheduledbackups", "cqox-postgres-daily", "schedule", "0 0 9 * * *"),
        ("barmancloud.cnpg.io", "objectstores", "cqox-postgres-backups", "retentionPolicy", "1d"),
    ):  # hand edits, as `kubectl edit` would make them
        live = kube.get_custom(group, "v1", plural, name, ns)
        live["spec"][field] = value
        kube.replace_custom(group, "v1", plural, live, ns)
    failed = _run_check(kube, target, "k8s_postgres_cluster")
    assert not failed.passed
    assert sorted(failed.metadata["drifted_paths"].value) == [
        f"ObjectStore/{ns}/cqox-postgres-backups: spec.retentionPolicy",
        f"ScheduledBackup/{ns}/cqox-postgres-daily: spec.schedule",
    ]
    _apply_assets(kube, target, "k8s_postgres_cluster")
    assert _run_check(kube, target, "k8s_postgres_cluster").passed


def test_ui_auth_manifests_are_accepted_by_the_api_server(kube, target):
    """deploy/dagster/ui-auth (issue 13, item 10): the API server validates every object and keeps the fence."""
    from tests.helpers import UI_AUTH_DIR, UI_AUTH_VALUES, WEBSERVER_POD_LABELS

    ns = target["namespace"]
    (namespace,) = render(MANIFEST_DIR / "namespace.yaml", {"NAMESPACE": ns})
    kube.apply(namespace)
    applied = []
    for path in sorted(UI_AUTH_DIR.glob("*.yaml")):
        for obj in render(path, {**UI_AUTH_VALUES, "NAMESPACE": ns}):
            live = kube.apply(obj)
            assert live["metadata"]["resourceVersion"]
            applied.append((obj["kind"], obj["metadata"]["name"]))
    assert len(applied) == 5
    policy = kube.get("networking.k8s.io/v1", "NetworkPolicy", "dagster-webserver-only-from-ui-proxy", ns)
    assert policy["spec"]["podSelector"]["matchLabels"] == WEBSERVER_POD_LABELS
    (rule,) = policy["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [{"app.kubernetes.io/name": "dagster-ui-proxy"}]


def test_alert_rules_and_routing_are_accepted_as_operator_objects_and_promtool_tests_the_live_rules(kube, target):
    """PrometheusRule and AlertmanagerConfig on an API server with the operator's CRDs: accepted, in sync after
    the apply, and the rules read back from the server still pass promtool's check and unit tests."""
    from cqox_platform.alerts.prometheus_operator import (
        ALERTING_SECRET,
        HEARTBEAT_KEY,
        HEARTBEAT_RECEIVER,
        ROUTING_NAME,
        promtool_test,
        rule_sources,
    )
    from cqox_platform.alerts.routing import load_spec as load_routing_spec
    from cqox_platform.slo.spec import DEFAULT_SPEC, load_spec

    ns = target["namespace"]
    meta = _apply_assets(kube, target, "k8s_namespace", "k8s_prometheus_rules", "k8s_alertmanager_config")
    sources = rule_sources(load_spec(DEFAULT_SPEC))
    applied = {o["name"]: o for o in meta["k8s_prometheus_rules"]["applied"].value}
    assert set(applied) == {s.name for s in sources}
    assert all(o["kind"] == "PrometheusRule" and o["action"] == "created" for o in applied.values())
    assert set(meta["k8s_prometheus_rules"]["validated"].value) == set(applied)

    live_rules = [kube.get("monitoring.coreos.com/v1", "PrometheusRule", name, ns) for name in applied]
    groups = {s.name: s.groups for s in sources}
    for live in live_rules:
        assert live["spec"]["groups"] == groups[live["metadata"]["name"]], live["metadata"]["name"]
    tested = promtool_test(live_rules, sources)
    assert set(tested) == set(applied)
    assert all("SUCCESS" in summary for summary in tested.values()), tested

    routing = kube.get("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig", ROUTING_NAME, ns)
    spec = load_routing_spec()
    assert routing["spec"]["route"]["receiver"] == spec.default_receiver
    # The dead man's switch first (the Watchdog must not fall into a severity route), then one route per severity.
    assert [(r["matchers"][0]["value"], r["receiver"]) for r in routing["spec"]["route"]["routes"]] == [
        (spec.heartbeat.alertname, HEARTBEAT_RECEIVER),
        *spec.routes,
    ]
    heartbeat = next(r for r in routing["spec"]["receivers"] if r["name"] == HEARTBEAT_RECEIVER)
    assert heartbeat["webhookConfigs"][0]["urlSecret"] == {"name": ALERTING_SECRET, "key": HEARTBEAT_KEY}
    pagerduty = next(r for r in routing["spec"]["receivers"] if r["name"] == "pagerduty")
    assert set(pagerduty["pagerdutyConfigs"][0]["routingKey"]) == {"name", "key"}  # a reference, never a value

    for name in ("k8s_prometheus_rules", "k8s_alertmanager_config"):
        evaluation = _run_check(kube, target, name)
        assert evaluation.passed, evaluation.description

    # The CRDs' schemas are enforced: a malformed duration and an unknown matcher operator are refused (422).
    bad_rule = {**live_rules[0], "metadata": {"name": "cqox-bad-rule", "namespace": ns}}
    bad_rule["spec"] = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "five minutes"}]}]}
    with pytest.raises(KubernetesInvalidError):
        kube.apply(bad_rule)
    bad_routing = {**routing, "metadata": {"name": "cqox-bad-routing", "namespace": ns}}
    bad_routing["spec"] = {"route": {"receiver": "tickets", "matchers": [{"name": "severity", "matchType": "=="}]}}
    with pytest.raises(KubernetesInvalidError):
        kube.apply(bad_routing)
