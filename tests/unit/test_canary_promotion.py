"""Promotion to stable, the pure parts (issue 16 item 1): what "rolled out" means, what the stable Deployment gets.

The phases against a real API server (kube-controller-manager creating ReplicaSets and reporting status) are in
tests/integration/test_canary.py.
"""

from __future__ import annotations

import pytest
import yaml

from cqox_platform.canary.policy import POLICY_DIR, PolicyError, parse_policy, policy_document
from cqox_platform.canary.promotion import AVAILABLE, UPDATED, canary_replicas, rolled_out, with_canary_template
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
