"""Traffic shifting over the Kubernetes API: route weights of one VirtualService route, the canary's image.

Only the weights of the named route's stable and canary destinations change; everything else in the object,
including fields other writers own, is sent back exactly as read. The write carries the ``resourceVersion``
of that read, so a concurrent change makes it fail with 409 instead of overwriting; the router then reads again
and retries, which is what keeps the other writer's change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cqox_platform.canary.policy import KubeTarget
from cqox_platform.errors import CanaryError
from cqox_platform.kube.errors import KubernetesConflictError

T = TypeVar("T")
VS = ("networking.istio.io", "v1", "virtualservices")


class KubeClient(Protocol):
    """What the router needs of a Kubernetes client (``KubernetesResource`` in the code location)."""

    request_timeout: float
    field_manager: str

    def get_custom(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> dict: ...

    def replace_custom(
        self, group: str, version: str, plural: str, body: dict, namespace: str | None = None
    ) -> dict: ...

    def apps(self) -> Any: ...

    def autoscaling(self) -> Any: ...

    def call(self, what: str, fn: Callable[[], T]) -> T: ...


PREVIOUS_IMAGE = "cqox.io/previous-image"


class RouteError(CanaryError):
    """The VirtualService does not have the route or subsets the policy names."""


@dataclass(frozen=True)
class WeightChange:
    resource_version_before: str
    resource_version_after: str
    canary_weight: int
    changed: bool
    attempts: int


def with_weights(vs: dict[str, Any], target: KubeTarget, canary_weight: int) -> dict[str, Any]:
    """A copy of ``vs`` with the route's canary/stable weights set; raises if the route or a subset is missing."""
    out = copy.deepcopy(vs)
    routes = [r for r in out.get("spec", {}).get("http", []) if r.get("name") == target.route]
    if not routes:
        raise RouteError(
            f"VirtualService {target.namespace}/{target.virtual_service} has no http route {target.route!r}."
        )
    destinations = routes[0].get("route", [])
    subsets = {d.get("destination", {}).get("subset"): d for d in destinations}
    for subset in (target.stable_subset, target.canary_subset):
        if subset not in subsets:
            raise RouteError(
                f"route {target.route!r} of VirtualService {target.namespace}/{target.virtual_service} has no "
                f"destination with subset {subset!r} (has {sorted(s for s in subsets if s)})."
            )
    subsets[target.canary_subset]["weight"] = canary_weight
    subsets[target.stable_subset]["weight"] = 100 - canary_weight
    return out


def current_weight(vs: dict[str, Any], target: KubeTarget) -> int | None:
    for route in vs.get("spec", {}).get("http", []):
        if route.get("name") == target.route:
            for d in route.get("route", []):
                if d.get("destination", {}).get("subset") == target.canary_subset:
                    return d.get("weight", 0)
    return None


def shift_weights(kube: KubeClient, target: KubeTarget, canary_weight: int, retries: int = 5) -> WeightChange:
    group, version, plural = VS
    for attempt in range(1, retries + 1):
        vs = kube.get_custom(group, version, plural, target.virtual_service, target.namespace)
        before = vs["metadata"]["resourceVersion"]
        desired = with_weights(vs, target, canary_weight)
        if desired == vs:
            return WeightChange(before, before, canary_weight, False, attempt)
        try:
            updated = kube.replace_custom(group, version, plural, desired, target.namespace)
        except KubernetesConflictError:
            continue  # someone else wrote in between: read their version and apply ours on top
        return WeightChange(before, updated["metadata"]["resourceVersion"], canary_weight, True, attempt)
    raise KubernetesConflictError(
        f"VirtualService {target.namespace}/{target.virtual_service} kept changing under us: gave up after "
        f"{retries} attempts."
    )


def set_canary_image(kube: KubeClient, target: KubeTarget, image: str) -> str | None:
    """Point the canary Deployment's container at ``image``; returns the image it had (kept for rollback)."""
    apps = kube.apps()
    where = f"Deployment {target.namespace}/{target.canary_deployment}"
    deployment = kube.call(
        f"reading {where}",
        lambda: apps.read_namespaced_deployment(
            target.canary_deployment, target.namespace, _request_timeout=kube.request_timeout
        ),
    )
    containers = {c.name: c for c in deployment.spec.template.spec.containers}
    if target.container not in containers:
        raise RouteError(f"{where} has no container {target.container!r} (has {sorted(containers)}).")
    previous = containers[target.container].image
    patch = {
        "metadata": {"annotations": {PREVIOUS_IMAGE: previous or ""}},
        "spec": {"template": {"spec": {"containers": [{"name": target.container, "image": image}]}}},
    }
    kube.call(
        f"setting the image of {where}",
        lambda: apps.patch_namespaced_deployment(
            target.canary_deployment,
            target.namespace,
            patch,
            field_manager=kube.field_manager,
            _request_timeout=kube.request_timeout,
        ),
    )
    return previous
