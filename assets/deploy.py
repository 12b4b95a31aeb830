"""Kubernetes manifests as assets (group ``deploy``): what runs CQOx in the cluster, applied and checked.

Each asset is one file of ``cqox_platform/deploy/k8s`` (the namespace, the engine's Deployments and Service, its
HPAs for stable and canary, strict mTLS, the canary traffic objects, the CloudNativePG cluster, the Grafana
dashboards' ConfigMaps), rendered with the
run's namespace and images, or objects rendered from the platform's own sources (the alert rules as
``PrometheusRule`` objects, checked and unit-tested with promtool first, and the alert routing as an
``AlertmanagerConfig``), applied by server-side apply as field manager ``cqox-platform``. Server-side apply
makes a re-run a no-op when nothing changed, and takes back any field a hand edit changed, so materializing an
asset is how an operator repairs drift. Its metadata names every object with its resourceVersion and generation
and what the apply changed; the check ``manifests_in_sync`` tells, between runs, whether somebody changed the live
objects since.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import yaml

from assets.metadata import column, table
from cqox_platform.alerts.prometheus_operator import alertmanager_config, prometheus_rules, promtool_test, rule_sources
from cqox_platform.alerts.routing import load_spec as load_routing_spec
from cqox_platform.deploy.manifests import (
    MANIFEST_DIR,
    DriftReport,
    apply_manifests,
    check_drift,
    render,
    runtime_owned,
)
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.slo.spec import load_spec as load_slo_spec
from cqox_platform.slo.spec import spec_path

GROUP = "deploy"
CHECK_NAME = "manifests_in_sync"


class ManifestConfig(dg.Config):
    """What the manifests leave open: where CQOx runs and which images it runs."""

    namespace: str = "cqox"
    #: The stable engine's image; the canary starts on it too until a rollout sets the canary's own.
    engine_image: str = "cqox/engine:1.0.0"
    #: PostgreSQL 15 (the roadmap's major version) in an image the CloudNativePG operator can run.
    postgres_image: str = "ghcr.io/cloudnative-pg/postgresql:15"

    def values(self) -> dict[str, str]:
        return {"NAMESPACE": self.namespace, "ENGINE_IMAGE": self.engine_image, "POSTGRES_IMAGE": self.postgres_image}


Manifests = list[dict[str, Any]]


@dataclass(frozen=True)
class ManifestAsset:
    """One asset's objects: a file of ``cqox_platform/deploy/k8s``, or a function rendering them from the
    platform's sources (``source`` then says which), with what must pass before they are applied."""

    name: str
    file: str | None
    deps: tuple[str, ...]
    description: str
    generate: Callable[[Mapping[str, str]], Manifests] | None = None
    source: str = ""
    #: Run on the rendered objects before any is applied; returns what to record, raises to stop the apply.
    validate: Callable[[Manifests], dict[str, str]] | None = None

    def manifests(self, values: Mapping[str, str]) -> Manifests:
        if self.generate is not None:
            return self.generate(values)
        assert self.file is not None
        return render(MANIFEST_DIR / self.file, values)

    @property
    def origin(self) -> str:
        return self.source or f"cqox_platform/deploy/k8s/{self.file}"


def _prometheus_rules(values: Mapping[str, str]) -> Manifests:
    return prometheus_rules(load_slo_spec(spec_path()), values["NAMESPACE"])


def _promtool(manifests: Manifests) -> dict[str, str]:
    return promtool_test(manifests, rule_sources(load_slo_spec(spec_path())))


def _alertmanager_config(values: Mapping[str, str]) -> Manifests:
    return [alertmanager_config(load_routing_spec(), values["NAMESPACE"])]


MANIFEST_ASSETS = (
    ManifestAsset(
        "k8s_namespace",
        "namespace.yaml",
        (),
        "The namespace CQOx runs in, labelled for Istio's sidecar injection (strict mTLS needs a sidecar).",
    ),
    ManifestAsset(
        "k8s_engine_workloads",
        "engine.yaml",
        ("k8s_namespace",),
        "The CQOx engine: stable (v1) and canary (v2) Deployments and their Service; the HPA owns the stable "
        "replica count, the canary router the canary's image.",
    ),
    ManifestAsset(
        "k8s_engine_hpa",
        "hpa.yaml",
        ("k8s_engine_workloads",),
        "autoscaling/v2 HPAs of the engine: stable 3 to 10 pods, canary 1 to 10 (its floor raised by the canary "
        "policy as the weight grows, runtime-owned), at 70 % CPU, scale-in after 5 calm minutes.",
    ),
    ManifestAsset(
        "k8s_istio_mtls",
        "istio-mtls.yaml",
        ("k8s_namespace",),
        "Strict mutual TLS: PeerAuthentication STRICT and an ISTIO_MUTUAL DestinationRule for the namespace.",
    ),
    ManifestAsset(
        "k8s_engine_traffic",
        "engine-traffic.yaml",
        ("k8s_engine_workloads", "k8s_istio_mtls"),
        "Canary traffic: DestinationRule subsets v1/v2 (ISTIO_MUTUAL) and the VirtualService `cqox-engine` whose "
        "route `primary` the canary router moves; its weights stay the router's.",
    ),
    ManifestAsset(
        "k8s_postgres_cluster",
        "postgres-cluster.yaml",
        ("k8s_namespace",),
        "CloudNativePG cluster: three PostgreSQL 15 instances, failover after 30 s, WAL archived by the Barman "
        "Cloud plugin to the ObjectStore s3://cqox-backups-dr/postgres/ (kept 30 days), a ScheduledBackup at 03:00.",
    ),
    ManifestAsset(
        "k8s_grafana_dashboards",
        "grafana-dashboards.yaml",
        ("k8s_namespace",),
        'Grafana dashboards (SLOs, backups, canary rollouts) as ConfigMaps labelled grafana_dashboard: "1" for '
        "the dashboard sidecar of Grafana's Helm chart; generated from the SLO spec, the alert rules and the pushed "
        "gauges by `cqox-platform dashboards render`.",
    ),
    ManifestAsset(
        "k8s_prometheus_rules",
        None,
        ("k8s_namespace",),
        "The platform's alert rules as Prometheus-operator PrometheusRule objects, one per rule file: service, "
        "platform and backup alerts and the SLO burn-rate rules; checked and unit-tested with promtool before "
        "they are applied.",
        generate=_prometheus_rules,
        source="cqox_platform/alerts/*-alerts.yml and the SLO spec (cqox_platform.alerts.prometheus_operator)",
        validate=_promtool,
    ),
    ManifestAsset(
        "k8s_alertmanager_config",
        None,
        ("k8s_namespace",),
        "The alert routing of cqox_platform/alerts/routing.yaml as a Prometheus-operator AlertmanagerConfig: "
        "page -> PagerDuty, ticket -> webhook, the same grouping and inhibition; receivers read the Secret "
        "cqox-alerting, never a value in the object.",
        generate=_alertmanager_config,
        source="cqox_platform/alerts/routing.yaml (cqox_platform.alerts.prometheus_operator)",
    ),
)


def _manifest_asset(spec: ManifestAsset) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        kinds={"kubernetes"},
        deps=list(spec.deps),
        description=f"{spec.description} Applied from {spec.origin} by server-side apply.",
    )
    def _apply(
        context: dg.AssetExecutionContext, config: ManifestConfig, kubernetes: KubernetesResource
    ) -> dg.MaterializeResult:
        manifests = spec.manifests(config.values())
        validated = spec.validate(manifests) if spec.validate is not None else {}
        for name, summary in validated.items():
            context.log.info(f"{name}: {summary}")
        applied = apply_manifests(kubernetes, manifests)
        for obj in applied:
            changed = f": {', '.join(c.path for c in obj.changes)}" if obj.changes else ""
            context.log.info(f"{obj.identity} {obj.action} (resourceVersion {obj.resource_version}){changed}")
        changes = [[obj.identity, c.path, _value(c.live), _value(c.desired)] for obj in applied for c in obj.changes]
        owned = {f"{m['kind']}/{m['metadata']['name']}": runtime_owned(m) for m in manifests if runtime_owned(m)}
        return dg.MaterializeResult(
            metadata={
                "manifest": spec.origin,
                **({"validated": dg.MetadataValue.json(validated)} if validated else {}),
                "api_server": kubernetes.server,
                "field_manager": kubernetes.field_manager,
                "render_values": dg.MetadataValue.json(config.values()),
                "created": sum(o.action == "created" for o in applied),
                "updated": sum(o.action == "updated" for o in applied),
                "unchanged": sum(o.action == "unchanged" for o in applied),
                "objects": table(
                    [
                        column("object", description="kind/namespace/name"),
                        column("action", description="created, updated or unchanged"),
                        column("resourceVersion"),
                        column("generation", "int"),
                        column("changed fields", "int"),
                    ],
                    [[o.identity, o.action, o.resource_version, o.generation, len(o.changes)] for o in applied],
                ),
                "applied": dg.MetadataValue.json([o.summary() for o in applied]),
                "changed_fields": len(changes),
                # The fields the apply changed; no entry when none did (changed_fields is 0).
                **({"diff": table(_DIFF_COLUMNS["applied"], changes)} if changes else {}),
                "runtime_owned": dg.MetadataValue.json(owned),
                "rendered": dg.MetadataValue.md(f"```yaml\n{_yaml(manifests)}```"),
            }
        )

    return _apply


#: A field's values are JSON text (a number, a list, an object): one column type for whatever the field holds.
_DIFF_COLUMNS = {
    "applied": [
        column("object"),
        column("field", description="path in the object"),
        column("was", description="the live value before the apply (JSON); empty: not set"),
        column("now", description="the applied value (JSON)"),
    ],
    "drift": [
        column("object"),
        column("field", description="path in the object"),
        column("desired", description="what the manifest sets (JSON)"),
        column("live", description="what the API server holds (JSON); empty: not set"),
    ],
}


def _value(value: Any) -> str | None:
    """A field's value as a table cell: strings as they are, anything else as JSON, absent as empty."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _yaml(manifests: list[dict]) -> str:
    return "---\n".join(yaml.safe_dump(m, sort_keys=False) for m in manifests)


def _manifest_check(spec: ManifestAsset) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=spec.name,
        name=CHECK_NAME,
        description="Every object of the manifest exists and the fields the manifest sets have the desired "
        "values (server defaults and runtime-owned fields aside); fails listing each differing field.",
    )
    def _check(context: dg.AssetCheckExecutionContext, kubernetes: KubernetesResource) -> dg.AssetCheckResult:
        values = _last_render_values(context, spec.name)
        reports = check_drift(kubernetes, spec.manifests(values))
        missing = [r.identity for r in reports if not r.present]
        drifted = [(r.identity, d) for r in reports for d in r.differences]
        paths = [f"{who}: {d.path}" for who, d in drifted]
        if missing or drifted:
            description = "; ".join([*(f"{m} is missing" for m in missing), *paths])
        else:
            description = f"{len(reports)} object(s) match {spec.origin}."
        return dg.AssetCheckResult(
            passed=not missing and not drifted,
            description=description,
            metadata={
                "objects": table(
                    [
                        column("object", description="kind/namespace/name"),
                        column("state", description="in sync, drifted or missing"),
                        column("resourceVersion"),
                        column("differing fields", "int"),
                    ],
                    [[r.identity, _state(r), r.resource_version, len(r.differences)] for r in reports],
                ),
                "missing": dg.MetadataValue.json(missing),
                "drifted_paths": dg.MetadataValue.json(paths),
                **(
                    {
                        "differences": table(
                            _DIFF_COLUMNS["drift"],
                            [[who, d.path, _value(d.desired), _value(d.live)] for who, d in drifted],
                        )
                    }
                    if drifted
                    else {}
                ),
                "render_values": dg.MetadataValue.json(values),
            },
        )

    return _check


def _state(report: DriftReport) -> str:
    if not report.present:
        return "missing"
    return "in sync" if report.in_sync else "drifted"


def _last_render_values(context: dg.AssetCheckExecutionContext, asset_name: str) -> dict[str, str]:
    """What the asset last applied with, so the check compares against that (defaults before any apply)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset_name))
    if event is not None and event.asset_materialization is not None:
        recorded = event.asset_materialization.metadata.get("render_values")
        if recorded is not None and isinstance(recorded.value, dict):
            return {str(k): str(v) for k, v in recorded.value.items()}
    return ManifestConfig().values()


deploy_assets = [_manifest_asset(spec) for spec in MANIFEST_ASSETS]
deploy_checks = [_manifest_check(spec) for spec in MANIFEST_ASSETS]

defs = dg.Definitions(assets=deploy_assets, asset_checks=deploy_checks)
