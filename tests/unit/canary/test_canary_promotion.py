"""Promotion to stable, the pure parts (issue 16 item 1): what "rolled out" means, what the stable Deployment gets.

The phases against a real API server (kube-controller-manager creating ReplicaSets and reporting status) are in
tests/integration/test_canary.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from cqox_platform.canary.policy import POLICY_DIR, PolicyError, parse_policy, policy_document
from cqox_platform.canary.promotion import (
    AVAILABLE,
    CANARY_REPLICAS,
    UPDATED,
    _scale_canary_down,
    canary_replicas,
    follow_stable,
    restore_canary_replicas,
    rolled_out,
    with_canary_template,
)
from cqox_platform.canary.router import RouteError


def deployment(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, conditions=()) -> dict:
    return {
        "metadata": {"name": "cqox-engine", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "updatedReplicas": updated,
            "replicas": total,
            "availableReplicas": available,
            "conditions": list(conditions),
        },
    }


ROLLED_OUT = [
    # (name, deployment, ready, rolled out?, fragment of the detail)
    ("everything updated and available", deployment(), AVAILABLE, True, "3 of 3 replicas updated and available"),
    ("controller has not seen the new template", deployment(observed=1), AVAILABLE, False, "observed generation 1"),
    ("no status yet", {"metadata": {"generation": 1}, "spec": {}}, UPDATED, False, "observed generation 0 of 1"),
    ("new ReplicaSet still scaling up", deployment(updated=1), AVAILABLE, False, "1 of 3 replicas updated"),
    ("old replicas still running", deployment(total=4), AVAILABLE, False, "1 old replica"),
    ("updated but not available", deployment(available=0), AVAILABLE, False, "0 of 3 updated replicas available"),
    # The local stack: kube-controller-manager but no kubelet, so pods stay Pending and never become available,
    # and a maxUnavailable-0 rolling update stops after the first new pod.
    (
        "no kubelet: generation observed, first new pod created",
        deployment(updated=1, total=3, available=0),
        UPDATED,
        True,
        "1 of 3 replicas on the new template",
    ),
    ("no kubelet: new template not observed yet", deployment(observed=1), UPDATED, False, "observed generation 1"),
    ("no kubelet: no new pod yet", deployment(updated=0, available=0), UPDATED, False, "no replica on the new"),
    (
        "progress deadline exceeded",
        deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "stuck"}]),
        AVAILABLE,
        False,
        "progress deadline exceeded",
    ),
    ("scaled to zero", deployment(replicas=0, updated=0, total=0, available=0), AVAILABLE, True, "0 of 0"),
    # Without a kubelet no pod ever becomes available, so every Deployment reaches its progress deadline ten
    # minutes after its last change; seen in the canary demo on a stack older than that, where the promotion
    # then waited for ever. The deadline is about availability, which "updated" deliberately leaves out.
    (
        "no kubelet: the progress deadline (about availability) does not count",
        deployment(
            updated=1,
            total=4,
            available=0,
            conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "stuck"}],
        ),
        UPDATED,
        True,
        "1 of 3 replicas on the new template",
    ),
]


@pytest.mark.parametrize(("name", "obj", "ready", "done", "fragment"), ROLLED_OUT, ids=[r[0] for r in ROLLED_OUT])
def test_rolled_out(name, obj, ready, done, fragment) -> None:
    got, detail = rolled_out(obj, ready)
    assert got is done and fragment in detail, detail


def pod(name: str, **container) -> dict:
    return {
        "metadata": {"name": name, "resourceVersion": "7"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy"}, {"name": "app", **container}]}}
        },
    }


def test_the_stable_container_gets_the_canary_fields_the_policy_names_and_keeps_the_rest() -> None:
    stable = pod("stable", image="engine:1", env=[{"name": "A", "value": "1"}], resources={"x": 1}, ports=[1])
    canary = pod("canary", image="engine:2", env=[{"name": "B", "value": "2"}], ports=[2])
    out = with_canary_template(stable, canary, "app", ("image", "env", "resources"))
    app = out["spec"]["template"]["spec"]["containers"][1]
    assert app == {"name": "app", "image": "engine:2", "env": [{"name": "B", "value": "2"}], "ports": [1]}
    assert out["spec"]["template"]["spec"]["containers"][0] == {"name": "sidecar", "image": "envoy"}
    assert out["metadata"] == stable["metadata"]  # resourceVersion kept: the write is guarded by it
    assert stable["spec"]["template"]["spec"]["containers"][1]["image"] == "engine:1"  # input untouched


def test_a_missing_container_is_named() -> None:
    with pytest.raises(RouteError, match="no container 'app'"):
        with_canary_template(
            pod("stable", image="x"),
            {"metadata": {"name": "c"}, "spec": {"template": {"spec": {"containers": []}}}},
            "app",
            ("image",),
        )


def _raw() -> dict:
    return yaml.safe_load((POLICY_DIR / "cqox-engine.yaml").read_text())


def test_the_shipped_policy_promotes_to_the_stable_deployment_and_round_trips() -> None:
    policy = parse_policy(_raw())
    assert policy.promotion is not None and policy.promotion.stable_deployment == "cqox-engine"
    assert policy.promotion.fields[0] == "image"
    assert parse_policy(policy_document(policy)).promotion == policy.promotion


def test_promotion_always_copies_the_image_and_refuses_unknown_fields() -> None:
    raw = _raw()
    raw["promotion"] = {"stable_deployment": "s", "fields": ["env"]}
    assert parse_policy(raw).promotion.fields == ("image", "env")
    raw["promotion"]["fields"] = ["image", "securityContext"]
    with pytest.raises(PolicyError, match="securityContext"):
        parse_policy(raw, where="p.yaml")
    raw["promotion"] = {"fields": ["image"]}
    with pytest.raises(PolicyError, match="stable_deployment"):
        parse_policy(raw)


def test_a_policy_stored_before_promotion_existed_still_parses() -> None:
    raw = _raw()
    del raw["promotion"]
    assert parse_policy(raw).promotion is None


@pytest.mark.parametrize(
    ("stable", "weight", "canary"),
    [(2, 10, 1), (2, 50, 1), (2, 100, 2), (10, 10, 1), (10, 50, 5), (7, 50, 4), (10, 100, 10), (0, 50, 1)],
)
def test_the_canary_follows_stables_replicas_in_proportion_to_its_weight(stable, weight, canary) -> None:
    """Issue 16 item 5: 50 % and 100 % of the traffic are not served by one pod; never fewer than one."""
    assert canary_replicas(stable, weight) == canary


class _Response:
    def __init__(self, obj: dict) -> None:
        self.data = json.dumps(obj).encode()


class _FakeCluster:
    """Just enough of the Deployments and HPA APIs for following stable and scaling down (issue 16 item 5)."""

    request_timeout = 5.0
    field_manager = "test"

    def __init__(self, stable: int, canary: int, hpa_min: int = 1, hpa_max: int = 10) -> None:
        self.deployments = {
            "cqox-engine": {"metadata": {"name": "cqox-engine"}, "spec": {"replicas": stable}},
            "cqox-engine-canary": {"metadata": {"name": "cqox-engine-canary"}, "spec": {"replicas": canary}},
        }
        self.hpa = {
            "metadata": {"name": "cqox-engine-canary"},
            "spec": {"minReplicas": hpa_min, "maxReplicas": hpa_max},
        }

    def call(self, what, fn):
        return fn()

    def apps(self):
        cluster = self

        class Apps:
            def read_namespaced_deployment(self, name, ns, **_):
                return _Response(cluster.deployments[name])

            def patch_namespaced_deployment(self, name, ns, patch, **_):
                obj = cluster.deployments[name]
                obj["spec"].update(patch["spec"])
                obj["metadata"].setdefault("annotations", {}).update(patch.get("metadata", {}).get("annotations", {}))

        return Apps()

    def autoscaling(self):
        cluster = self

        class Autoscaling:
            def read_namespaced_horizontal_pod_autoscaler(self, name, ns, **_):
                assert name == "cqox-engine-canary"
                return _Response(cluster.hpa)

            def patch_namespaced_horizontal_pod_autoscaler(self, name, ns, patch, **_):
                cluster.hpa["spec"].update(patch["spec"])

        return Autoscaling()


@pytest.mark.parametrize(
    ("stable", "canary", "weight", "hpa_max", "floor", "replicas"),
    [
        (2, 1, 10, 10, 1, 1),
        (10, 1, 50, 10, 5, 5),  # the floor rises and the pods exist before the traffic
        (10, 1, 100, 4, 4, 4),  # never above the HPA's ceiling
        (2, 6, 50, 10, 1, 6),  # the HPA scaled out for load: following stable does not scale it in
    ],
)
def test_with_a_canary_hpa_following_stable_raises_its_floor(stable, canary, weight, hpa_max, floor, replicas):
    policy = parse_policy(_raw())
    assert policy.promotion.canary_hpa == "cqox-engine-canary"
    cluster = _FakeCluster(stable, canary, hpa_max=hpa_max)
    follow_stable(cluster, policy, weight)
    assert cluster.hpa["spec"]["minReplicas"] == floor
    assert cluster.deployments["cqox-engine-canary"]["spec"]["replicas"] == replicas


def test_without_a_canary_hpa_the_canary_is_scaled_directly():
    raw = _raw()
    del raw["promotion"]["canary_hpa"]
    cluster = _FakeCluster(10, 6)
    assert follow_stable(cluster, parse_policy(raw), 50) == (6, 5)
    assert cluster.hpa["spec"]["minReplicas"] == 1  # untouched


def test_scaling_down_after_promotion_puts_the_hpa_floor_back_to_one():
    policy = parse_policy(_raw())
    cluster = _FakeCluster(10, 10, hpa_min=10)
    detail = _scale_canary_down(cluster, policy.kubernetes, policy.promotion)
    canary = cluster.deployments["cqox-engine-canary"]
    assert canary["spec"]["replicas"] == 0 and canary["metadata"]["annotations"][CANARY_REPLICAS] == "10"
    assert cluster.hpa["spec"]["minReplicas"] == 1
    assert "minReplicas 10 -> 1" in detail


def test_a_new_start_scales_the_canary_up_from_zero_to_its_hpa_floor():
    """As Flagger scales a canary up from zero: to the HPA's minReplicas (which re-enables the HPA), not to the
    count it had at 100 % of the last rollout; without an HPA, to that remembered count."""
    policy = parse_policy(_raw())
    cluster = _FakeCluster(10, 0)
    cluster.deployments["cqox-engine-canary"]["metadata"]["annotations"] = {CANARY_REPLICAS: "10"}
    assert restore_canary_replicas(cluster, policy.kubernetes, "cqox-engine-canary") == 1
    assert cluster.deployments["cqox-engine-canary"]["spec"]["replicas"] == 1
    cluster.deployments["cqox-engine-canary"]["spec"]["replicas"] = 0
    assert restore_canary_replicas(cluster, policy.kubernetes) == 10
