"""Canary policies: one YAML file per service (``cqox_platform/canary/policies/<service>.yaml``), validated on load.

A policy says how traffic moves (steps, interval), what counts as evidence (a minimum number of canary
requests per interval), which metrics judge the canary and how (absolute thresholds and thresholds relative
to stable), how patient to be (failures and consecutive holds before rolling back) and when the error budget
forbids going past the first step. Errors name the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cqox_platform.errors import CanaryError
from cqox_platform.package_data import package_path
from cqox_platform.settings import get_settings

POLICY_DIR = package_path("cqox_platform.canary", "policies")


class PolicyError(CanaryError):
    """A canary policy file is invalid."""


@dataclass(frozen=True)
class MetricCheck:
    name: str
    query: str
    max: float | None = None
    max_over_stable: float | None = None  # canary - stable <= this
    max_ratio_to_stable: float | None = None  # canary / stable <= this
    description: str = ""


@dataclass(frozen=True)
class KubeTarget:
    namespace: str
    virtual_service: str
    route: str
    stable_subset: str
    canary_subset: str
    canary_deployment: str
    container: str


@dataclass(frozen=True)
class PrometheusSettings:
    selector: str
    version_label: str = "version"
    stable_version: str = "stable"
    canary_version: str = "canary"


@dataclass(frozen=True)
class BudgetGate:
    slo: str
    min_remaining: float


#: Container fields promotion may copy from the canary to the stable Deployment (``promotion.fields``).
PROMOTABLE_FIELDS = (
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "ports",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
)


HOLD_ON_TIMEOUT, ROLLBACK_ON_TIMEOUT = "hold", "rollback"
PRE_ROLLOUT, PRE_STEP, POST_ROLLOUT, ROLLBACK_HOOK = "pre-rollout", "pre-step", "post-rollout", "rollback"
WEBHOOK_TYPES = (PRE_ROLLOUT, PRE_STEP, POST_ROLLOUT, ROLLBACK_HOOK)
BLOCK, ROLL_BACK = "block", "rollback"


@dataclass(frozen=True)
class Webhook:
    """One HTTP call of the rollout (``canary/webhooks.py`` says when each type runs and what a failure does)."""

    name: str
    type: str
    url: str
    timeout_seconds: float = 10.0
    retries: int = 2
    on_failure: str = BLOCK
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Promotion:
    """How a successful canary becomes the stable version.

    The stable Deployment's container gets the canary container's ``fields`` (the image always), the platform
    waits up to ``timeout_seconds`` for the stable Deployment to roll out, then moves all traffic to stable and
    scales the canary to 0.
    """

    stable_deployment: str
    fields: tuple[str, ...] = ("image",)
    #: The canary follows the stable Deployment's replica count in proportion to its weight (at least one),
    #: so 50 % and 100 % of the traffic are not served by one pod.
    follow_stable_replicas: bool = False
    #: The canary Deployment's HPA (``deploy/k8s/hpa.yaml``), as Flagger's ``autoscalerRef``; "" for none. With
    #: one, following stable raises the HPA's ``minReplicas`` (the HPA owns the replica count), and promotion
    #: scales the canary to 0, which disables that HPA until the next start (Kubernetes does not autoscale a
    #: target at 0 replicas), then puts ``minReplicas`` back to 1.
    canary_hpa: str = ""
    timeout_seconds: int = 300
    poll_seconds: float = 2.0


@dataclass(frozen=True)
class CanaryPolicy:
    service: str
    version: int
    kubernetes: KubeTarget
    steps: tuple[int, ...]
    interval_seconds: int
    min_requests: int
    failure_limit: int
    max_consecutive_holds: int
    prometheus: PrometheusSettings
    metrics: tuple[MetricCheck, ...]
    requests_query: str
    budget_gate: BudgetGate | None = None
    #: None only in policies stored before promotion existed: their rollouts end with the canary at 100 %.
    promotion: Promotion | None = None
    #: Gates: indexes of steps a person must approve before traffic moves to them (``confirm: true``), how long
    #: to wait for that approval once the analysis would promote (0: forever), and what then (hold or rollback).
    confirm_steps: tuple[int, ...] = ()
    confirm_timeout_seconds: int = 0
    on_confirm_timeout: str = "hold"
    webhooks: tuple[Webhook, ...] = ()
    source: str = field(default="", compare=False)

    @property
    def window(self) -> str:
        return f"{self.interval_seconds}s"

    def render(self, template: str, version: str, window: str | None = None) -> str:
        """A PromQL template with ``{selector}``, ``{version_label}``, ``{version}``, ``{window}`` filled in."""
        p = self.prometheus
        return " ".join(
            template.format(
                selector=p.selector, version_label=p.version_label, version=version, window=window or self.window
            ).split()
        )


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise PolicyError(f"{where}: `{key}` is missing.")
    return data[key]


def parse_policy(data: dict[str, Any], *, where: str = "canary policy") -> CanaryPolicy:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a mapping at the top level.")
    try:
        steps, confirm_steps = _steps(_require(data, "steps", where), where)
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise PolicyError(f"{where}: `steps` must rise strictly within 1..100 and end at 100, got {list(steps)}.")
        metrics = []
        for i, m in enumerate(_require(data, "metrics", where)):
            name = str(_require(m, "name", f"{where} metrics[{i}]"))
            at = f"{where} metrics[{i}] ({name})"
            check = MetricCheck(
                name=name,
                query=str(_require(m, "query", f"{where} metrics[{i}]")),
                max=_threshold(m, "max", at),
                max_over_stable=_threshold(m, "max_over_stable", at),
                max_ratio_to_stable=_threshold(m, "max_ratio_to_stable", at),
                description=m.get("description", ""),
            )
            if check.max is None and check.max_over_stable is None and check.max_ratio_to_stable is None:
                raise PolicyError(f"{where} metrics[{i}] ({check.name}): give at least one threshold.")
            metrics.append(check)
        if not metrics:
            # Without a metric the only evidence is the request count: any canary with traffic would promote.
            raise PolicyError(f"{where}: `metrics` is empty; give at least one metric to judge the canary by.")
        gate = data.get("budget_gate")
        promotion = _promotion(data.get("promotion"), where)
        policy = CanaryPolicy(
            service=str(_require(data, "service", where)),
            version=int(_require(data, "version", where)),
            kubernetes=KubeTarget(**_require(data, "kubernetes", where)),
            steps=steps,
            interval_seconds=int(_require(data, "interval_seconds", where)),
            min_requests=int(_require(data, "min_requests", where)),
            failure_limit=int(_require(data, "failure_limit", where)),
            max_consecutive_holds=int(_require(data, "max_consecutive_holds", where)),
            prometheus=PrometheusSettings(**_require(data, "prometheus", where)),
            metrics=tuple(metrics),
            requests_query=str(_require(data, "requests_query", where)),
            budget_gate=_budget_gate(gate, where) if gate else None,
            promotion=promotion,
            confirm_steps=confirm_steps,
            confirm_timeout_seconds=int(data.get("confirm_timeout_seconds", 0)),
            on_confirm_timeout=str(data.get("on_confirm_timeout", HOLD_ON_TIMEOUT)),
            webhooks=_webhooks(data.get("webhooks"), where),
            source=where,
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise PolicyError(f"{where}: {exc}") from None
    if policy.on_confirm_timeout not in (HOLD_ON_TIMEOUT, ROLLBACK_ON_TIMEOUT) or policy.confirm_timeout_seconds < 0:
        raise PolicyError(
            f"{where}: on_confirm_timeout must be `hold` or `rollback`, confirm_timeout_seconds >= 0 (0: none)."
        )
    if policy.interval_seconds < 1 or policy.failure_limit < 1 or policy.max_consecutive_holds < 0:
        raise PolicyError(f"{where}: interval_seconds and failure_limit must be >= 1, max_consecutive_holds >= 0.")
    for template in [policy.requests_query, *(m.query for m in policy.metrics)]:
        try:
            policy.render(template, "x")
        except (KeyError, IndexError, ValueError) as exc:
            raise PolicyError(f"{where}: query template {template[:60]!r}... has a bad placeholder: {exc}") from None
    return policy


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not one.

    Only YAML numbers count: a quoted ``'0.01'`` stays a string that every decision would compare with a float
    (``TypeError``, the rollout stuck at its weight), and NaN compares false with everything, so a NaN threshold
    would pass every canary. Both are refused when the policy loads, not discovered during a rollout.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _threshold(metric: dict[str, Any], key: str, at: str) -> float | None:
    """A metric's threshold: absent, or a finite number."""
    raw = metric.get(key)
    if raw is None:
        return None
    value = _number(raw)
    if value is None:
        kind = "a finite number" if isinstance(raw, float) else "a number (unquoted in YAML)"
        raise PolicyError(f"{at}: `{key}` must be {kind}, got {raw!r}; write it like `{key}: 0.01`.")
    return value


def _budget_gate(gate: Any, where: str) -> BudgetGate:
    if not isinstance(gate, dict):
        raise PolicyError(f"{where}: `budget_gate` must be a mapping with `slo` and `min_remaining`.")
    remaining = _number(gate.get("min_remaining"))
    if remaining is None:
        raise PolicyError(
            f"{where}: budget_gate.min_remaining must be a finite number (the share of the error budget that must "
            f"be left, like 0.25), got {gate.get('min_remaining')!r}."
        )
    return BudgetGate(str(_require(gate, "slo", f"{where} budget_gate")), remaining)


def _steps(raw: Any, where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``steps`` entries are a weight or ``{weight: W, confirm: true}``: the weights and the confirm steps' indexes."""
    weights, confirm = [], []
    for i, entry in enumerate(raw):
        if isinstance(entry, dict):
            weights.append(int(_require(entry, "weight", f"{where} steps[{i}]")))
            if entry.get("confirm"):
                confirm.append(i)
        else:
            weights.append(int(entry))
    if 0 in confirm:
        raise PolicyError(f"{where}: steps[0] cannot need `confirm`: `canary start` (a person's action) enters it.")
    return tuple(weights), tuple(confirm)


def _webhooks(raw: Any, where: str) -> tuple[Webhook, ...]:
    hooks = []
    for i, entry in enumerate(raw or []):
        at = f"{where} webhooks[{i}]"
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("url"):
            raise PolicyError(f"{at}: a webhook needs `name`, `type` and `url`.")
        hook = Webhook(
            name=str(entry["name"]),
            type=str(entry.get("type", "")),
            url=str(entry["url"]),
            timeout_seconds=float(entry.get("timeout_seconds", 10)),
            retries=int(entry.get("retries", 2)),
            on_failure=str(entry.get("on_failure", BLOCK)),
            metadata={str(k): str(v) for k, v in (entry.get("metadata") or {}).items()},
        )
        if hook.type not in WEBHOOK_TYPES:
            raise PolicyError(f"{at} ({hook.name}): type must be one of {', '.join(WEBHOOK_TYPES)}, got {hook.type!r}.")
        if hook.on_failure not in (BLOCK, ROLL_BACK):
            raise PolicyError(f"{at} ({hook.name}): on_failure must be `block` or `rollback`.")
        if hook.timeout_seconds <= 0 or hook.retries < 0:
            raise PolicyError(f"{at} ({hook.name}): timeout_seconds must be > 0 and retries >= 0.")
        if not hook.url.startswith(("http://", "https://")):
            raise PolicyError(f"{at} ({hook.name}): url must be http(s).")
        hooks.append(hook)
    return tuple(hooks)


def _promotion(data: Any, where: str) -> Promotion | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: `promotion` must be a mapping.")
    fields = tuple(str(f) for f in data.get("fields", ["image"]))
    unknown = sorted(set(fields) - set(PROMOTABLE_FIELDS))
    if unknown:
        raise PolicyError(
            f"{where}: promotion.fields {unknown} are not container fields promotion copies "
            f"(choose from {list(PROMOTABLE_FIELDS)})."
        )
    promotion = Promotion(
        stable_deployment=str(_require(data, "stable_deployment", f"{where} promotion")),
        fields=tuple(dict.fromkeys(("image", *fields))),
        timeout_seconds=int(data.get("timeout_seconds", 300)),
        poll_seconds=float(data.get("poll_seconds", 2.0)),
        follow_stable_replicas=bool(data.get("follow_stable_replicas", False)),
        canary_hpa=str(data.get("canary_hpa") or ""),
    )
    if promotion.timeout_seconds < 1 or promotion.poll_seconds <= 0:
        raise PolicyError(f"{where}: promotion.timeout_seconds must be >= 1 and poll_seconds > 0.")
    return promotion


def policy_document(policy: CanaryPolicy) -> dict[str, Any]:
    """The policy as the JSON mapping ``parse_policy`` reads: stored with a rollout, so the rollout is decided by
    the policy it started with (``canary start --policy F``), not by whatever file is in place later."""
    doc = asdict(policy)
    doc["steps"] = [
        {"weight": w, "confirm": True} if i in policy.confirm_steps else w for i, w in enumerate(policy.steps)
    ]
    doc["confirm_steps"] = list(policy.confirm_steps)
    doc["webhooks"] = [asdict(h) for h in policy.webhooks]  # informational; `steps` carries them when read back
    doc["metrics"] = [asdict(m) for m in policy.metrics]
    if policy.promotion is not None:
        doc["promotion"] = {**asdict(policy.promotion), "fields": list(policy.promotion.fields)}
    return doc


def load_policy(path: Path) -> CanaryPolicy:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read canary policy {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None
    return parse_policy(data, where=str(path))


def policy_dir() -> Path:
    """Where policies are read: the ``canary_policy_dir`` setting, else the package's ``canary/policies``."""
    return get_settings().canary_policy_dir or POLICY_DIR


def policy_for(service: str, directory: Path | None = None) -> CanaryPolicy:
    path = (directory or policy_dir()) / f"{service}.yaml"
    if not path.exists():
        raise PolicyError(f"no canary policy for {service!r}: expected {path}.")
    return load_policy(path)
