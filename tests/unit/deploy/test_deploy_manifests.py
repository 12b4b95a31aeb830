"""The manifests of cqox_platform/deploy/k8s and the drift logic, without an API server."""

from __future__ import annotations

import copy

import pytest

from cqox_platform.deploy.manifests import (
    ABSENT,
    MANIFEST_DIR,
    ManifestError,
    drift,
    keep_runtime_owned,
    render,
    runtime_owned,
)
from tests.helpers import UI_AUTH_DIR, UI_AUTH_VALUES, WEBSERVER_POD_LABELS

VALUES = {"NAMESPACE": "cqox", "ENGINE_IMAGE": "cqox/engine:1.2.3", "POSTGRES_IMAGE": "example/postgresql:15"}


def _all() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted(MANIFEST_DIR.glob("*.yaml")):
        for obj in render(path, VALUES):
            objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def test_every_file_renders_and_names_its_namespace():
    objects = _all()
    assert ("Namespace", "cqox") in objects
    for (kind, _name), obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "cqox"
        assert "${" not in str(obj)


def test_hpa_targets_the_stable_deployment_which_leaves_replicas_to_it():
    objects = _all()
    hpa = objects[("HorizontalPodAutoscaler", "cqox-engine")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    stable = objects[("Deployment", target["name"])]
    assert "replicas" not in stable["spec"]  # the HPA owns it
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] >= 2  # one pod down must not take the engine down
    cpu = hpa["spec"]["metrics"][0]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    for container in stable["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"]  # utilisation is a share of the request


def test_the_canary_has_its_own_hpa_whose_floor_the_rollout_owns():
    """Issue 16 item 5: 50 % and 100 % of the traffic are not served by one pod. The canary HPA scales the canary
    Deployment from 1 to as many pods as stable may have; the canary policy raises its floor during a rollout, so
    `minReplicas` is runtime-owned (a re-apply keeps it, drift ignores it), as is the Deployment's replica count."""
    objects = _all()
    stable_hpa = objects[("HorizontalPodAutoscaler", "cqox-engine")]
    hpa = objects[("HorizontalPodAutoscaler", "cqox-engine-canary")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "cqox-engine-canary")
    assert hpa["spec"]["minReplicas"] == 1
    assert hpa["spec"]["maxReplicas"] == stable_hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"] == stable_hpa["spec"]["metrics"]
    assert runtime_owned(hpa) == ["spec.minReplicas"]
    canary = objects[("Deployment", "cqox-engine-canary")]
    assert "spec.replicas" in runtime_owned(canary)
    # A rollout raised the floor to 5 and the HPA scaled out: a re-apply keeps both, and neither is drift.
    live = copy.deepcopy(hpa)
    live["spec"]["minReplicas"] = 5
    assert keep_runtime_owned(hpa, live)["spec"]["minReplicas"] == 5
    assert drift(hpa, live) == []
    live["spec"]["maxReplicas"] = 2  # a hand edit of the ceiling is drift
    assert [d.path for d in drift(hpa, live)] == ["spec.maxReplicas"]


def test_the_shipped_canary_policy_names_the_canary_hpa():
    from cqox_platform.canary.policy import POLICY_DIR, load_policy

    policy = load_policy(POLICY_DIR / "cqox-engine.yaml")
    objects = _all()
    assert policy.promotion.follow_stable_replicas
    hpa = objects[("HorizontalPodAutoscaler", policy.promotion.canary_hpa)]
    assert hpa["spec"]["scaleTargetRef"]["name"] == policy.kubernetes.canary_deployment


def test_strict_mtls_and_istio_mutual_everywhere():
    objects = _all()
    assert objects[("PeerAuthentication", "default")]["spec"]["mtls"]["mode"] == "STRICT"
    rules = [obj for (kind, _), obj in objects.items() if kind == "DestinationRule"]
    assert len(rules) == 2
    for rule in rules:  # Istio does not merge a host's rule with the wildcard one: each must say ISTIO_MUTUAL
        assert rule["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert objects[("DestinationRule", "cqox-mtls")]["spec"]["host"] == "*.cqox.svc.cluster.local"


def test_virtualservice_routes_reach_the_deployments_through_the_subsets():
    objects = _all()
    vs = objects[("VirtualService", "cqox-engine")]
    subsets = {s["name"]: s["labels"] for s in objects[("DestinationRule", "cqox-engine")]["spec"]["subsets"]}
    assert set(subsets) == {"v1", "v2"}
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
    assert [d["destination"]["subset"] for d in primary["route"]] == ["v1", "v2"]
    assert sum(d["weight"] for d in primary["route"]) == 100
    deployments = {"v1": objects[("Deployment", "cqox-engine")], "v2": objects[("Deployment", "cqox-engine-canary")]}
    service = objects[("Service", "cqox-engine")]
    for subset, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert subsets[subset].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert runtime_owned(vs) == ["spec.http[*].route[*].weight"]


def test_postgres_cluster_has_the_roadmaps_instances_and_backups():
    objects = _all()
    cluster = objects[("Cluster", "cqox-postgres-cluster")]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert spec["failoverDelay"] == 30
    assert "backup" not in spec, "the in-tree barmanObjectStore is deprecated: backups go through the plugin"
    (plugin,) = spec["plugins"]
    assert plugin["name"] == "barman-cloud.cloudnative-pg.io" and plugin["isWALArchiver"] is True
    store = objects[("ObjectStore", plugin["parameters"]["barmanObjectName"])]
    assert store["apiVersion"] == "barmancloud.cnpg.io/v1"
    assert store["spec"]["configuration"]["destinationPath"] == "s3://cqox-backups-dr/postgres/"
    assert store["spec"]["retentionPolicy"] == "30d"
    assert spec["imageName"] == VALUES["POSTGRES_IMAGE"]
    assert all(isinstance(v, str) for v in spec["postgresql"]["parameters"].values())
    scheduled = objects[("ScheduledBackup", "cqox-postgres-daily")]
    assert scheduled["spec"]["cluster"]["name"] == "cqox-postgres-cluster"
    assert scheduled["spec"]["method"] == "plugin"
    assert scheduled["spec"]["pluginConfiguration"]["name"] == plugin["name"]
    # The store is applied before the Cluster that names it, the ScheduledBackup after its Cluster.
    kinds = [o["kind"] for o in render(MANIFEST_DIR / "postgres-cluster.yaml", VALUES)]
    assert kinds == ["ObjectStore", "Cluster", "ScheduledBackup"]


def test_postgres_cluster_backups_agree_with_the_platforms_own():
    """The cluster's backups follow the platform's: the DR bucket, the retention window, the 03:00 backup."""
    from assets.backups.common import DAILY_BACKUP_CRON
    from cqox_platform.backup.retention import DEFAULT_KEEP_DAYS
    from cqox_platform.stack.config import DR_BUCKET

    objects = _all()
    store = objects[("ObjectStore", "cqox-postgres-backups")]["spec"]
    assert store["configuration"]["destinationPath"].startswith(f"s3://{DR_BUCKET}/")
    assert store["retentionPolicy"] == f"{DEFAULT_KEEP_DAYS}d"
    schedule = objects[("ScheduledBackup", "cqox-postgres-daily")]["spec"]["schedule"]
    seconds, *five = schedule.split()
    assert seconds == "0" and " ".join(five) == DAILY_BACKUP_CRON  # CloudNativePG's cron starts with seconds


def test_render_names_a_missing_placeholder_and_bad_documents(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: ${NAMESPACE}}\n")
    with pytest.raises(ManifestError, match=r"placeholder \$\{NAMESPACE\} has no value"):
        render(path, {})
    path.write_text("kind: ConfigMap\nmetadata: {}\n")
    with pytest.raises(ManifestError, match=r"lacks apiVersion, metadata\.name"):
        render(path, {})


HPA = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "e", "namespace": "cqox", "labels": {"app.kubernetes.io/part-of": "cqox"}},
    "spec": {"minReplicas": 3, "maxReplicas": 10, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}},
}


def _live(desired: dict) -> dict:
    """What a server returns: the desired fields plus defaults, status and server metadata."""
    live = copy.deepcopy(desired)
    live["metadata"].update({"resourceVersion": "7", "uid": "u", "managedFields": []})
    live["metadata"]["labels"]["added-by-server"] = "x"
    live["spec"]["behavior"]["scaleDown"]["policies"] = [{"type": "Percent", "value": 100}]
    live["spec"]["behavior"]["scaleUp"] = {"stabilizationWindowSeconds": 0}
    live["status"] = {"desiredReplicas": 3}
    return live


def test_server_defaults_and_status_are_not_drift():
    assert drift(HPA, _live(HPA)) == []


def test_drift_lists_each_changed_or_missing_field_by_path():
    live = _live(HPA)
    live["spec"]["maxReplicas"] = 20
    del live["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    live["metadata"]["labels"]["app.kubernetes.io/part-of"] = "other"
    found = {d.path: (d.desired, d.live) for d in drift(HPA, live)}
    assert found == {
        "spec.maxReplicas": (10, 20),
        "spec.behavior.scaleDown.stabilizationWindowSeconds": (300, ABSENT),
        'metadata.labels["app.kubernetes.io/part-of"]': ("cqox", "other"),
    }


def test_lists_compare_item_by_item_and_by_length():
    desired = {"kind": "X", "metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}, {"port": 443}]}}
    live = copy.deepcopy(desired)
    live["spec"]["ports"][1]["protocol"] = "TCP"  # a default inside an item: fine
    assert drift(desired, live) == []
    live["spec"]["ports"][1]["port"] = 8443
    assert [d.path for d in drift(desired, live)] == ["spec.ports[1].port"]
    live["spec"]["ports"].append({"port": 9000})
    assert [d.path for d in drift(desired, live)] == ["spec.ports"]


def test_booleans_are_not_numbers():
    desired = {"kind": "X", "metadata": {"name": "x"}, "spec": {"flag": 1}}
    assert [d.path for d in drift(desired, {**desired, "spec": {"flag": True}})] == ["spec.flag"]


VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {
        "name": "cqox-engine",
        "annotations": {"platform.cqox.io/runtime-owned": "spec.http[*].route[*].weight"},
    },
    "spec": {
        "hosts": ["cqox-engine"],
        "http": [
            {"name": "primary", "route": [{"destination": {"subset": "v1"}, "weight": 100}, {"weight": 0}]},
        ],
    },
}


def test_runtime_owned_fields_keep_their_live_values_and_are_not_drift():
    live = copy.deepcopy(VS)
    live["spec"]["http"][0]["route"][0]["weight"], live["spec"]["http"][0]["route"][1]["weight"] = 90, 10
    assert drift(VS, live) == []
    body = keep_runtime_owned(VS, live)
    assert [r["weight"] for r in body["spec"]["http"][0]["route"]] == [90, 10]
    assert [r["weight"] for r in VS["spec"]["http"][0]["route"]] == [100, 0]  # the desired manifest is untouched
    live["spec"]["hosts"] = ["elsewhere"]
    assert [d.path for d in drift(VS, live)] == ["spec.hosts[0]"]  # other fields are still checked
    assert keep_runtime_owned(VS, None) == VS  # nothing live: the manifest's values


def test_runtime_owned_field_missing_live_takes_the_desired_value():
    live = copy.deepcopy(VS)
    del live["spec"]["http"][0]["route"][1]["weight"]
    assert [r.get("weight") for r in keep_runtime_owned(VS, live)["spec"]["http"][0]["route"]] == [100, 0]


# --- deploy/dagster/ui-auth: the login in front of the Dagster UI (issue 13, item 10) -----------------------

#: The webserver's Service port (the Dagster Helm chart's, release `dagster`).
WEBSERVER_PORT = 80


def ui_auth_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted(UI_AUTH_DIR.glob("*.yaml")):
        for obj in render(path, UI_AUTH_VALUES):
            objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are checked here"
    return selector["matchLabels"].items() <= labels.items()


def test_ui_auth_manifests_render_into_the_namespace():
    objects = ui_auth_objects()
    assert {kind for kind, _ in objects} == {"ServiceAccount", "Deployment", "Service", "NetworkPolicy", "Ingress"}
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "cqox"
        assert "${" not in str(obj)


def test_the_webserver_admits_only_the_ui_proxy():
    objects = ui_auth_objects()
    (policy,) = [o for (kind, _), o in objects.items() if kind == "NetworkPolicy"]
    proxy_pods = objects[("Deployment", "dagster-ui-proxy")]["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert _selects(spec["podSelector"], WEBSERVER_POD_LABELS)  # it is the webserver that is fenced in
    assert not _selects(spec["podSelector"], proxy_pods)
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]  # one rule: a second would widen what is admitted
    (peer,) = rule["from"]  # and one peer: no namespaceSelector or ipBlock (other namespaces, addresses)
    assert set(peer) == {"podSelector"}
    assert _selects(peer["podSelector"], proxy_pods)
    assert not _selects(peer["podSelector"], WEBSERVER_POD_LABELS)
    assert rule["ports"] == [{"protocol": "TCP", "port": WEBSERVER_PORT}]


def test_the_proxy_signs_in_forwards_to_the_webserver_and_holds_no_secret():
    objects = ui_auth_objects()
    deployment = objects[("Deployment", "dagster-ui-proxy")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["upstream"] == f"http://dagster-webserver.cqox.svc.cluster.local:{WEBSERVER_PORT}/"
    assert args["provider"] == "oidc" and args["oidc-issuer-url"] == "https://login.example.org"
    assert args["allowed-group"] == "cqox-operators"
    assert args["cookie-secure"] == "true"
    assert not any("secret" in a for a in args), "secrets come from the Secret, never from arguments"
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert from_secret == {
        "OAUTH2_PROXY_CLIENT_ID": "dagster-ui-oauth2-proxy",
        "OAUTH2_PROXY_CLIENT_SECRET": "dagster-ui-oauth2-proxy",
        "OAUTH2_PROXY_COOKIE_SECRET": "dagster-ui-oauth2-proxy",
    }
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["automountServiceAccountToken"] is False
    # The Service and the Ingress lead to the proxy, never to the webserver.
    service = objects[("Service", "dagster-ui-proxy")]
    assert _selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    assert not _selects({"matchLabels": service["spec"]["selector"]}, WEBSERVER_POD_LABELS)
    ingress = objects[("Ingress", "dagster-ui")]
    backends = [p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == ["dagster-ui-proxy"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["dagster.example.org"]
