"""Promotion to stable: the canary that passed its analysis becomes the stable version.

Phases, in order, each recorded with what it saw:

1. ``template_copied``: the stable Deployment's container gets the canary container's image and the fields
   the policy names (``promotion.fields``), written with the ``resourceVersion`` it was read at (a concurrent
   writer makes it re-read and retry, as the router does for the VirtualService);
2. ``stable_rolled_out``: the platform waits until the stable Deployment has rolled out (``rolled_out``);
3. ``traffic_on_stable``: weights back to stable 100 / canary 0;
4. ``canary_scaled_down``: the canary Deployment to 0 replicas (the count it had is kept in an annotation, and
   the next ``canary start`` scales it back).

The canary has its own HPA (``promotion.canary_hpa``, ``deploy/k8s/hpa.yaml``: min 1, max as stable's), as
Flagger gives the canary one. Two writers of one replica count would fight, so with an HPA the platform scales
*through* it: following stable's replicas raises the HPA's ``minReplicas`` (and the Deployment to at least that
at once, so the pods exist before the traffic), and the HPA stays free to scale out above it. Scaling the canary
to 0 after promotion is what Flagger does too, and it holds because the HPA controller does not autoscale a target
at 0 replicas (condition ``ScalingActive=False``, reason ``ScalingDisabled``) whatever its ``minReplicas``; the
promotion then puts ``minReplicas`` back to 1, and the next ``canary start`` scales the Deployment back up, which
re-enables the HPA.

Until phase 2 is done all traffic stays on the canary, the version that passed the analysis at 100 %; from
phase 3 on it is on the stable Deployment, which then runs that same version. A failure in any phase therefore
leaves traffic on a version known to be good, and the result says which. Every phase is idempotent, so a failed
promotion is simply run again by the next decision run (the rollout stays ``promoting``).

What "rolled out" means is the ``canary_stable_ready`` setting:

- ``available`` (a cluster; the default), as ``kubectl rollout status``: the controller observed the newest
  generation (``status.observedGeneration >= metadata.generation``), every replica is updated, no old replica is
  left, and the updated ones are available; a ``ProgressDeadlineExceeded`` condition fails at once.
- ``updated`` (the local stack): the controller observed the newest generation and has created Pods of the new
  template (``updatedReplicas >= 1``). The stack runs kube-controller-manager, which does that and reports the
  status, but no kubelet, so its Pods stay Pending and never become available; and a zero-downtime rolling
  update (``maxUnavailable: 0``, as ``deploy/k8s/engine.yaml``) removes an old Pod only once a new one is
  available, so without a kubelet it never gets past the first new Pod. That much is what the stack can prove.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cqox_platform.canary.policy import CanaryPolicy, KubeTarget, Promotion
from cqox_platform.canary.router import KubeClient, RouteError, shift_weights
from cqox_platform.errors import CanaryError, CqoxError
from cqox_platform.kube.errors import KubernetesConflictError

TEMPLATE_COPIED, STABLE_ROLLED_OUT, TRAFFIC_ON_STABLE, CANARY_SCALED_DOWN = (
    "template_copied",
    "stable_rolled_out",
    "traffic_on_stable",
    "canary_scaled_down",
)
PHASES = (TEMPLATE_COPIED, STABLE_ROLLED_OUT, TRAFFIC_ON_STABLE, CANARY_SCALED_DOWN)
CANARY_REPLICAS = "cqox.io/canary-replicas"  # the canary's replica count before promotion scaled it to 0
AVAILABLE, UPDATED = "available", "updated"


class PromotionError(CanaryError):
    """A promotion phase failed; traffic is on a version known to be good (the message says which)."""


@dataclass(frozen=True)
class Phase:
    name: str
    detail: str
    seconds: float


@dataclass(frozen=True)
class PromotionResult:
    ok: bool
    phases: tuple[Phase, ...] = field(default_factory=tuple)
    failed_phase: str = ""
    message: str = ""
    webhooks: tuple = ()  # post-rollout webhook results (``webhooks.WebhookResult``), set by the caller

    @property
    def last_phase(self) -> str | None:
        return self.phases[-1].name if self.phases else None


# --- pure parts ----------------------------------------------------------------------------------------------


def with_canary_template(stable: dict[str, Any], canary: dict[str, Any], container: str, fields: tuple[str, ...]):
    """A copy of the ``stable`` Deployment whose container ``container`` has the canary container's ``fields``
    (a field the canary does not set is removed from stable, so stable ends up as the canary is)."""

    def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
        name = deployment["metadata"]["name"]
        containers = deployment["spec"]["template"]["spec"]["containers"]
        for c in containers:
            if c["name"] == container:
                return c
        raise RouteError(f"Deployment {name} has no container {container!r} (has {[c['name'] for c in containers]}).")

    out = copy.deepcopy(stable)
    target, source = container_of(out), container_of(canary)
    for name in fields:
        if name in source:
            target[name] = copy.deepcopy(source[name])
        else:
            target.pop(name, None)
    return out


def rolled_out(deployment: dict[str, Any], ready: str = AVAILABLE) -> tuple[bool, str]:
    """Whether a Deployment has rolled out its newest template, and what it is waiting for (``kubectl rollout
    status``'s rules; ``ready="updated"`` leaves out availability, see the module docstring)."""
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    generation, observed = meta.get("generation", 0), status.get("observedGeneration", 0)
    if observed < generation:
        return False, f"controller has observed generation {observed} of {generation}"
    want = spec.get("replicas", 1)
    updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
    # The progress deadline measures availability, which "updated" leaves out: without a kubelet every
    # Deployment reaches it ten minutes after its last change.
    if ready != UPDATED:
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
                return False, f"progress deadline exceeded: {condition.get('message', '')}"
    if ready == UPDATED:
        if want > 0 and updated < 1:
            return False, f"generation {generation} observed, no replica on the new template yet"
        return True, (
            f"generation {generation} observed, {updated} of {want} replicas on the new template (no kubelet: "
            "pods never become available, so a rolling update goes no further)"
        )
    if updated < want:
        return False, f"{updated} of {want} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replica(s) still to go"
    if status.get("availableReplicas", 0) < updated:
        return False, f"{status.get('availableReplicas', 0)} of {updated} updated replicas available"
    return True, f"generation {generation} observed, {updated} of {want} replicas updated and available"


# --- cluster edges -------------------------------------------------------------------------------------------


def read_deployment(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    apps = kube.apps()
    response = kube.call(
        f"reading Deployment {namespace}/{name}",
        lambda: apps.read_namespaced_deployment(
            name, namespace, _preload_content=False, _request_timeout=kube.request_timeout
        ),
    )
    return json.loads(response.data)


def copy_template(kube: KubeClient, target: KubeTarget, promotion: Promotion, retries: int = 5) -> str:
    """Phase 1: the stable Deployment gets the canary's fields; returns what changed (idempotent)."""
    apps, ns = kube.apps(), target.namespace
    for _ in range(retries):
        canary = read_deployment(kube, ns, target.canary_deployment)
        stable = read_deployment(kube, ns, promotion.stable_deployment)
        desired = with_canary_template(stable, canary, target.container, promotion.fields)
        containers = desired["spec"]["template"]["spec"]["containers"]
        image = next(c["image"] for c in containers if c["name"] == target.container)
        if desired == stable:
            generation = stable["metadata"]["generation"]
            return f"stable already runs the canary's template ({image}), generation {generation}"
        try:
            updated = kube.call(
                f"updating Deployment {ns}/{promotion.stable_deployment}",
                lambda d=desired: apps.replace_namespaced_deployment(
                    promotion.stable_deployment,
                    ns,
                    d,
                    field_manager=kube.field_manager,
                    _request_timeout=kube.request_timeout,
                ),
            )
        except KubernetesConflictError:
            continue
        return f"stable set to {image} ({', '.join(promotion.fields)}), generation {updated.metadata.generation}"
    raise KubernetesConflictError(
        f"Deployment {ns}/{promotion.stable_deployment} kept changing under us: gave up after {retries} attempts."
    )


def wait_rolled_out(
    kube: KubeClient,
    namespace: str,
    name: str,
    promotion: Promotion,
    ready: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Phase 2: poll the stable Deployment until ``rolled_out``; ``PromotionError`` after the timeout."""
    deadline = clock() + promotion.timeout_seconds
    while True:
        done, detail = rolled_out(read_deployment(kube, namespace, name), ready)
        if done:
            return detail
        if clock() >= deadline:
            raise PromotionError(
                f"Deployment {namespace}/{name} did not roll out within {promotion.timeout_seconds} s ({detail})"
            )
        sleep(promotion.poll_seconds)


def scale_canary(kube: KubeClient, target: KubeTarget, replicas: int, *, remember: bool = False) -> int:
    """Set the canary's replica count; returns the count it had. ``remember`` keeps that count in an annotation
    (promotion), so ``restore_canary_replicas`` can give it back at the next start."""
    apps, ns, name = kube.apps(), target.namespace, target.canary_deployment
    before = read_deployment(kube, ns, name)
    had = before["spec"].get("replicas", 1)
    patch: dict[str, Any] = {"spec": {"replicas": replicas}}
    if remember and had > 0:
        patch["metadata"] = {"annotations": {CANARY_REPLICAS: str(had)}}
    kube.call(
        f"scaling Deployment {ns}/{name} to {replicas}",
        lambda: apps.patch_namespaced_deployment(
            name, ns, patch, field_manager=kube.field_manager, _request_timeout=kube.request_timeout
        ),
    )
    return had


def hpa_floor(want: int, hpa: dict[str, Any]) -> int:
    """The canary HPA's ``minReplicas`` for ``want`` pods: ``want``, within the HPA's 1..``maxReplicas``."""
    return max(1, min(want, hpa["spec"].get("maxReplicas", want)))


def read_hpa(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    api = kube.autoscaling()
    response = kube.call(
        f"reading HorizontalPodAutoscaler {namespace}/{name}",
        lambda: api.read_namespaced_horizontal_pod_autoscaler(
            name, namespace, _preload_content=False, _request_timeout=kube.request_timeout
        ),
    )
    return json.loads(response.data)


def set_hpa_floor(kube: KubeClient, namespace: str, name: str, want: int) -> tuple[int, int]:
    """The canary HPA's ``minReplicas`` for ``want`` pods; ``(before, after)``."""
    hpa = read_hpa(kube, namespace, name)
    before, after = hpa["spec"].get("minReplicas", 1), hpa_floor(want, hpa)
    if before != after:
        api = kube.autoscaling()
        kube.call(
            f"setting minReplicas of HorizontalPodAutoscaler {namespace}/{name} to {after}",
            lambda: api.patch_namespaced_horizontal_pod_autoscaler(
                name,
                namespace,
                {"spec": {"minReplicas": after}},
                field_manager=kube.field_manager,
                _request_timeout=kube.request_timeout,
            ),
        )
    return before, after


def canary_replicas(stable_replicas: int, weight: int) -> int:
    """How many pods the canary needs to serve ``weight`` % of what the stable Deployment's pods serve: the
    stable count in proportion, rounded up, at least one (the canary must exist to be judged)."""
    return max(1, math.ceil(stable_replicas * weight / 100))


def follow_stable(kube: KubeClient, policy: CanaryPolicy, weight: int) -> tuple[int, int] | None:
    """Scale the canary for ``weight`` (``canary_replicas`` of the stable Deployment's current count, which its
    HPA sets); ``(before, after)``, or None when the policy does not ask for it. With a canary HPA the HPA owns
    the count: its ``minReplicas`` becomes the wanted count and the Deployment is only ever raised to it (never
    lowered below what the HPA scaled out to)."""
    promotion = policy.promotion
    if promotion is None or not promotion.follow_stable_replicas:
        return None
    target = policy.kubernetes
    stable = read_deployment(kube, target.namespace, promotion.stable_deployment)
    want = canary_replicas(stable["spec"].get("replicas", 1), weight)
    before = read_deployment(kube, target.namespace, target.canary_deployment)["spec"].get("replicas", 1)
    if promotion.canary_hpa:
        _, floor = set_hpa_floor(kube, target.namespace, promotion.canary_hpa, want)
        want = max(before, floor)
    if before != want:
        scale_canary(kube, target, want)
    return before, want


def restore_canary_replicas(kube: KubeClient, target: KubeTarget, hpa: str = "") -> int | None:
    """Before a new rollout: a canary scaled to 0 by the last promotion gets back the replicas it had, or, when
    an HPA owns its count (``hpa``), the HPA's ``minReplicas``, as Flagger scales a canary up from zero; that
    re-enables the HPA."""
    canary = read_deployment(kube, target.namespace, target.canary_deployment)
    if canary["spec"].get("replicas", 1) > 0:
        return None
    if hpa:
        replicas = read_hpa(kube, target.namespace, hpa)["spec"].get("minReplicas", 1)
    else:
        replicas = int((canary["metadata"].get("annotations") or {}).get(CANARY_REPLICAS, "1"))
    scale_canary(kube, target, max(replicas, 1))
    return max(replicas, 1)


def promote_to_stable(
    kube: KubeClient,
    policy: CanaryPolicy,
    ready: str,
    *,
    canary_weight: int = 100,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PromotionResult:
    """Run the four phases; never raises for a cluster failure: the result names the phase and where traffic is
    (``canary_weight``: the canary's share when the promotion began; 100 unless an operator forced it)."""
    promotion, target = policy.promotion, policy.kubernetes
    if promotion is None:
        return PromotionResult(False, (), "", "the policy has no `promotion` section: the canary keeps 100 %")
    steps: list[tuple[str, Callable[[], str]]] = [
        (TEMPLATE_COPIED, lambda: copy_template(kube, target, promotion)),
        (
            STABLE_ROLLED_OUT,
            lambda: wait_rolled_out(
                kube, target.namespace, promotion.stable_deployment, promotion, ready, sleep=sleep, clock=clock
            ),
        ),
        (TRAFFIC_ON_STABLE, lambda: _traffic_on_stable(kube, target)),
        (CANARY_SCALED_DOWN, lambda: _scale_canary_down(kube, target, promotion)),
    ]
    done: list[Phase] = []
    for name, run in steps:
        started = clock()
        try:
            detail = run()
        except CqoxError as exc:
            if name == CANARY_SCALED_DOWN:
                where = "traffic is on the stable Deployment, which already runs the promoted version"
            elif canary_weight == 100:
                where = "traffic stays on the canary (100 %), the version that passed the analysis"
            else:
                where = f"traffic stays as it was (stable {100 - canary_weight} % / canary {canary_weight} %)"
            message = (
                f"promotion failed at {name}: {exc}; {where}. The rollout stays `promoting` and the next decision "
                "run retries the promotion."
            )
            return PromotionResult(False, tuple(done), name, message)
        done.append(Phase(name, detail, round(clock() - started, 3)))
    return PromotionResult(True, tuple(done), "", f"promoted: {done[-1].detail}; all traffic on stable")


def _scale_canary_down(kube: KubeClient, target: KubeTarget, promotion: Promotion) -> str:
    """Phase 4: the canary to 0 replicas; its HPA (if any) stops scaling a target at 0 and gets back its floor 1."""
    detail = f"canary scaled from {scale_canary(kube, target, 0, remember=True)} to 0 replicas"
    if promotion.canary_hpa:
        before, after = set_hpa_floor(kube, target.namespace, promotion.canary_hpa, 1)
        detail += (
            f"; HPA {promotion.canary_hpa} minReplicas {before} -> {after} (it does not scale a Deployment at 0 "
            "replicas until the next start scales it up)"
        )
    return detail


def _traffic_on_stable(kube: KubeClient, target: KubeTarget) -> str:
    change = shift_weights(kube, target, 0)
    return (
        f"stable 100 / canary 0 (VirtualService resourceVersion {change.resource_version_before} -> "
        f"{change.resource_version_after})"
    )
