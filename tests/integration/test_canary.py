"""Canary rollouts on the stack's real Kubernetes API server and Prometheus, with synthetic traffic.

Each scenario gets its own namespace (VirtualService, canary Deployment), its own traffic exporter scraped under
its own job, and a policy whose queries select that job. Time between analyses is compressed: the test moves
``last_decision_at`` back instead of waiting ten minutes; everything else (queries, decisions, weight changes,
materializations) is the real path.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import dagster as dg
import jsonschema
import psycopg
import pytest
import yaml

from assets.canary import canary_decision_job, canary_partitions, canary_rollout
from cqox_platform.canary.policy import POLICY_DIR, load_policy
from cqox_platform.canary.rollout import start_rollout
from cqox_platform.canary.router import VS, shift_weights
from cqox_platform.canary.store import get_rollout
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.pgserver import free_port
from cqox_platform.resources.kubernetes import KubernetesForbiddenError, KubernetesInvalidError, KubernetesResource
from cqox_platform.resources.postgres import PostgresResource
from cqox_platform.resources.prometheus import PrometheusResource
from cqox_platform.schema import MigrationRunner
from cqox_platform.slo.spec import DEFAULT_SPEC
from cqox_platform.slo.traffic import TrafficModel, VersionTraffic, serve
from sensors.canary_sensor import canary_sensor
from tests.helpers import postgres_admin, table_rows

SLO_SPEC = DEFAULT_SPEC
SCENARIOS = {
    "good": {"stable": VersionTraffic(rps=100), "canary": VersionTraffic(rps=40)},
    "bad": {"stable": VersionTraffic(rps=100), "canary": VersionTraffic(rps=40, error_ratio=0.2)},
    "silent": {"stable": VersionTraffic(rps=100), "canary": VersionTraffic(rps=0.0)},
    # Neither version ever failed: like a real client library, the exporter has no code="500" series at all.
    "clean": {"stable": VersionTraffic(rps=100, error_ratio=0.0), "canary": VersionTraffic(rps=40, error_ratio=0.0)},
    "burnt": {
        "stable": VersionTraffic(rps=100, error_ratio=0.004),
        "canary": VersionTraffic(rps=40, error_ratio=0.004),
    },
}


def _kube(stack, restricted: bool = False) -> KubernetesResource:
    env = stack.env()
    return KubernetesResource(kubeconfig=env["CQOX_KUBE_RESTRICTED_KUBECONFIG" if restricted else "CQOX_KUBECONFIG"])


def _objects(namespace: str) -> list[dict]:
    labels = {"app": "cqox-engine", "track": "canary"}
    stable = {"app": "cqox-engine", "track": "stable"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            # The stable Deployment as deploy/k8s/engine.yaml has it (zero-downtime rolling update), 2 replicas.
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "cqox-engine", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": stable},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": stable},
                    "spec": {
                        "containers": [
                            {
                                "name": "cqox-engine",
                                "image": "cqox/engine:v1",
                                "env": [{"name": "MODE", "value": "stable"}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "cqox-engine-canary", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "cqox-engine",
                                "image": "cqox/engine:v1",
                                "env": [{"name": "MODE", "value": "canary"}],
                            }
                        ]
                    },
                },
            },
        },
        {
            # The canary's HPA as deploy/k8s/hpa.yaml has it (issue 16 item 5): the policy raises its floor.
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "cqox-engine-canary", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cqox-engine-canary"},
                "minReplicas": 1,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                    }
                ],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "cqox-engine", "namespace": namespace},
            "spec": {
                "hosts": ["cqox-engine"],
                "http": [
                    {"name": "health", "route": [{"destination": {"host": "cqox-engine", "subset": "v1"}}]},
                    {
                        "name": "primary",
                        "timeout": "30s",
                        "route": [
                            {"destination": {"host": "cqox-engine", "subset": "v1"}, "weight": 100},
                            {"destination": {"host": "cqox-engine", "subset": "v2"}, "weight": 0},
                        ],
                    },
                ],
            },
        },
    ]


def _policy_dir(root: Path, name: str, namespace: str, job: str, **overrides) -> Path:
    raw = yaml.safe_load((POLICY_DIR / "cqox-engine.yaml").read_text())
    raw["kubernetes"]["namespace"] = namespace
    raw["prometheus"]["selector"] = f'job="{job}"'
    raw["promotion"].update({"timeout_seconds": 60, "poll_seconds": 0.5})
    raw.update({"interval_seconds": 60, "min_requests": 200, "max_consecutive_holds": 2, **overrides})
    directory = root / f"policies-{name}"
    directory.mkdir(exist_ok=True)
    (directory / "cqox-engine.yaml").write_text(yaml.safe_dump(raw))
    spec = yaml.safe_load(SLO_SPEC.read_text())
    spec["selector"] = {"job": job}
    (directory / "slos.yaml").write_text(yaml.safe_dump(spec))
    return directory


def _scraped(prometheus: PrometheusResource, job: str) -> bool:
    # Two scrapes inside the 60 s window, so rate() has a value for both versions.
    result = prometheus.query(f'count_over_time(http_requests_total{{job="{job}",code="200"}}[60s])')
    return len(result) >= 1 and all(float(r["value"][1]) >= 3 for r in result)


@pytest.fixture(scope="module")
def world(stack):
    env = stack.env()
    with mock.patch.dict(os.environ, env), postgres_admin(stack).connect(autocommit=True) as conn:
        MigrationRunner().migrate(conn)
    kube = _kube(stack)
    prometheus = PrometheusResource(url=env["CQOX_PROMETHEUS_URL"])
    root = Path(stack.config.root)
    scenarios, servers, targets = {}, [], []
    for name, versions in SCENARIOS.items():
        job = f"canary-{name}-{uuid.uuid4().hex[:6]}"
        namespace = f"canary-{name}-{uuid.uuid4().hex[:6]}"
        for obj in _objects(namespace):
            kube.apply(obj)
        port = free_port()
        servers.append(serve(TrafficModel(dict(versions)), "127.0.0.1", port))
        target = stack.service("prometheus").home / "targets" / f"{job}.json"
        target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"job": job}}]))
        targets.append(target)
        scenarios[name] = {"job": job, "namespace": namespace, "policies": _policy_dir(root, name, namespace, job)}
    deadline = time.monotonic() + 180
    while not all(_scraped(prometheus, s["job"]) for s in scenarios.values()):
        assert time.monotonic() < deadline, "Prometheus did not scrape the canary exporters"
        time.sleep(3)
    yield {"kube": kube, "prometheus": prometheus, "scenarios": scenarios, "scraped_at": time.time()}
    for target in targets:
        target.unlink()
    for server in servers:
        server.shutdown()


def _conn(stack) -> psycopg.Connection:
    return psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True)


def _start(stack, world, name: str, image: str | None = None, policy_file: Path | None = None):
    scenario = world["scenarios"][name]
    policy = load_policy(policy_file or scenario["policies"] / "cqox-engine.yaml")
    with _conn(stack) as conn:
        conn.execute(
            "UPDATE canary_rollouts SET status = 'rolled_back' WHERE status IN ('progressing', 'promoting', 'paused')"
        )
        rollout, _ = start_rollout(conn, world["kube"], policy, image or f"cqox/engine:{name}")
    return policy, rollout


def _scenario_env(stack, world, name: str) -> dict[str, str]:
    scenario = world["scenarios"][name]
    return {
        **stack.env(),
        "CQOX_CANARY_POLICY_DIR": str(scenario["policies"]),
        "CQOX_SLO_SPEC": str(scenario["policies"] / "slos.yaml"),
    }


def _sense(stack, world, name: str, instance, prometheus=None):
    """One sensor evaluation with time compressed: the request it made (or None) and its skip message."""
    with _conn(stack) as conn:
        conn.execute(
            "UPDATE canary_rollouts SET last_decision_at = now() - interval '1 hour', "
            "started_at = started_at - interval '1 hour' WHERE status IN ('progressing', 'promoting', 'paused')"
        )
    with _conn(stack) as conn:
        active = [
            r[0]
            for r in conn.execute(
                "SELECT rollout_id FROM canary_rollouts WHERE status IN ('progressing', 'promoting', 'paused')"
            )
        ]
    # As canary_start_job does; a rollout started from the CLI gets its partition from the sensor's result.
    instance.add_dynamic_partitions(canary_partitions.name, active)
    resources = {
        "postgres": postgres_admin(stack),
        "prometheus": prometheus or world["prometheus"],
        "kubernetes": world["kube"],
    }
    defs = dg.Definitions(
        assets=[canary_rollout], jobs=[canary_decision_job], sensors=[canary_sensor], resources=resources
    )
    with (
        mock.patch.dict(os.environ, _scenario_env(stack, world, name)),
        dg.build_sensor_context(instance=instance, resources=resources, definitions=defs) as context,
        # evaluate_tick resolves partitioned run requests against the current partition-loading store.
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        result = canary_sensor.evaluate_tick(context)
    if not result.run_requests:
        return None, result.skip_message
    (request,) = result.run_requests
    for partitions_request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(canary_partitions.name, list(partitions_request.partition_keys))
    return request, None


def _run(stack, world, name: str, request: dg.RunRequest, instance, prometheus=None, env=None) -> dict:
    """The decision run the request asks for, as the daemon would launch it; its materialization's metadata."""
    instance.add_dynamic_partitions(canary_partitions.name, [request.partition_key])
    with mock.patch.dict(os.environ, env or _scenario_env(stack, world, name)):
        run = dg.materialize(
            [canary_rollout],
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
            resources={
                "postgres": postgres_admin(stack),
                "kubernetes": world["kube"],
                "prometheus": prometheus or world["prometheus"],
            },
            instance=instance,
        )
    (event,) = run.asset_materializations_for_node("canary_rollout")
    return {k: v.value for k, v in event.metadata.items()}


def _tick(stack, world, name: str, instance, prometheus=None):
    """One sensor evaluation (time compressed) and, if it requested one, the decision run."""
    request, skipped = _sense(stack, world, name, instance, prometheus)
    if request is None:
        return None, skipped
    return _run(stack, world, name, request, instance, prometheus), request.run_key


def _tick_with(stack, world, name: str, instance, env: dict[str, str]):
    """``_tick`` with the decision run under ``env``."""
    request, skipped = _sense(stack, world, name, instance)
    if request is None:
        return None, skipped
    return _run(stack, world, name, request, instance, env=env), request.run_key


def _weights(world, name: str) -> dict[str, int]:
    ns = world["scenarios"][name]["namespace"]
    vs = world["kube"].get_custom(*VS, "cqox-engine", ns)
    primary = next(r for r in vs["spec"]["http"] if r["name"] == "primary")
    return {d["destination"]["subset"]: d["weight"] for d in primary["route"]}


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_a_good_canary_is_promoted_to_100_with_its_evidence_recorded(stack, world, instance):
    _policy, rollout = _start(stack, world, "good")
    assert _weights(world, "good") == {"v1": 90, "v2": 10}
    seen, replicas, floors = (
        [],
        [_deployments(world, "good")[1]["spec"]["replicas"]],
        [_hpa(world, "good")["spec"]["minReplicas"]],
    )
    for _ in range(3):
        meta, run_key = _tick(stack, world, "good", instance)
        assert meta is not None, run_key
        seen.append((meta["action"], meta["weight_after"]))
        replicas.append(_deployments(world, "good")[1]["spec"]["replicas"])
        floors.append(_hpa(world, "good")["spec"]["minReplicas"])
        metrics = {r["metric"]: r for r in table_rows(meta["metrics"])}
        assert (
            meta["canary_requests"] >= 200
            and 'version="canary"' in metrics["error_ratio"]["canary PromQL"]
            and "{version}" not in metrics["error_ratio"]["canary PromQL"]
            and isinstance(metrics["error_ratio"]["canary"], float)
        )
        assert meta["policy"].endswith("v4") and run_key.startswith(rollout.rollout_id)
    assert seen == [("promote", 50), ("promote", 100), ("complete", 0)]
    # Item 5: the canary follows stable's 2 replicas in proportion to its weight (10, 50, 100 %), then 0; with its
    # HPA, by raising the HPA's floor, which promotion puts back to 1.
    assert replicas == [1, 1, 2, 0]
    assert floors == [1, 1, 2, 1]
    assert meta["resource_version_before"] and meta["resource_version_after"]
    # Promotion to stable (issue 16 item 1): every phase done and recorded, in order, then `promoted`.
    assert meta["status"] == "promoted" and meta["promotion"] == "promoted to stable", meta["reason"]
    phases = table_rows(meta["promotion_phases"])
    order = ["template_copied", "stable_rolled_out", "traffic_on_stable", "canary_scaled_down"]
    assert [p["phase"] for p in phases if p["phase"] in order] == order
    assert all(p["outcome"] == "done" and p["seconds"] >= 0 for p in phases), phases
    details = " ".join(p["detail"] for p in phases)
    assert "replicas on the new template" in details  # "rolled out" without a kubelet (CQOX_CANARY_STABLE_READY)
    _assert_promoted(world, "good", "cqox/engine:good")
    assert "minReplicas 2 -> 1" in details
    # The canary HPA does not undo the scale-down: kube-controller-manager's HPA controller sees a target at 0
    # replicas and disables scaling (as it does for Flagger's canary), while its floor is 1.
    deadline = time.monotonic() + 90
    while not _hpa_condition(world, "good", "ScalingActive", "ScalingDisabled"):
        assert time.monotonic() < deadline, _hpa(world, "good").get("status")
        time.sleep(2)
    assert _deployments(world, "good")[1]["spec"]["replicas"] == 0
    with _conn(stack) as conn:
        assert get_rollout(conn, rollout.rollout_id).status == "promoted"
        assert get_rollout(conn, rollout.rollout_id).weight == 0
    meta, reason = _tick(stack, world, "good", instance)
    assert meta is None and "no canary rollout" in reason
    # The next rollout starts from the new stable: 90 % to the promoted image, the canary scaled back up.
    _policy, second = _start(stack, world, "good", image="cqox/engine:next")
    assert second.previous_image == "cqox/engine:good"
    assert _weights(world, "good") == {"v1": 90, "v2": 10}
    stable, canary = _deployments(world, "good")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "cqox/engine:good"
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "cqox/engine:next"
    assert canary["spec"]["replicas"] == 1


def _hpa(world, name: str) -> dict:
    from cqox_platform.canary.promotion import read_hpa

    return read_hpa(world["kube"], world["scenarios"][name]["namespace"], "cqox-engine-canary")


def _hpa_condition(world, name: str, kind: str, reason: str) -> bool:
    conditions = (_hpa(world, name).get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c.get("reason") == reason for c in conditions)


def _deployments(world, name: str) -> tuple[dict, dict]:
    from cqox_platform.canary.promotion import read_deployment

    ns = world["scenarios"][name]["namespace"]
    return read_deployment(world["kube"], ns, "cqox-engine"), read_deployment(world["kube"], ns, "cqox-engine-canary")


def _assert_promoted(world, name: str, image: str) -> None:
    """Stable runs the canary's template (image and the policy's fields) and has rolled out as far as a cluster
    without a kubelet can (controller observed the generation, every replica updated, no old one left); all
    traffic is on stable and the canary is scaled to 0."""
    stable, canary = _deployments(world, name)
    container = stable["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image
    assert container["env"] == [{"name": "MODE", "value": "canary"}]  # `env` is in promotion.fields
    status = stable["status"]
    assert status["observedGeneration"] >= stable["metadata"]["generation"] > 1
    assert status["updatedReplicas"] >= 1  # a pod of the new template (no kubelet: the rolling update stops here)
    assert _weights(world, name) == {"v1": 100, "v2": 0}
    assert canary["spec"]["replicas"] == 0
    assert canary["metadata"]["annotations"]["cqox.io/canary-replicas"] in ("1", "2")  # kept for the next start


def test_a_promotion_that_fails_midway_leaves_traffic_on_the_canary_and_is_finished_by_the_next_run(
    stack, world, instance
):
    """The stable Deployment does not roll out in time (here: "rolled out" asked to mean available, which no pod
    becomes without a kubelet): traffic stays on the canary, the version that passed the analysis, the rollout
    stays `promoting` and says so; the next run, with the stack's meaning of "rolled out", finishes it."""
    scenario = world["scenarios"]["good"]
    raw = yaml.safe_load((scenario["policies"] / "cqox-engine.yaml").read_text())
    policy_file = scenario["policies"] / "one-step.yaml"
    raw["promotion"] = {**raw["promotion"], "timeout_seconds": 3, "poll_seconds": 0.5}
    policy_file.write_text(yaml.safe_dump({**raw, "steps": [100]}))
    _policy, rollout = _start(stack, world, "good", image="cqox/engine:slow", policy_file=policy_file)
    env = {**_scenario_env(stack, world, "good"), "CQOX_CANARY_STABLE_READY": "available"}
    meta, _ = _tick_with(stack, world, "good", instance, env)
    assert meta["action"] == "complete" and meta["status"] == "promoting"
    assert meta["promotion"] == "failed at stable_rolled_out" and meta["promotion_phase"] == "template_copied"
    assert "traffic stays on the canary (100 %)" in meta["reason"] and "did not roll out within 3 s" in meta["reason"]
    assert _weights(world, "good") == {"v1": 0, "v2": 100}
    with _conn(stack) as conn:
        found = get_rollout(conn, rollout.rollout_id)
        assert (found.status, found.weight, found.promotion_phase) == ("promoting", 100, "template_copied")
    meta, _ = _tick(stack, world, "good", instance)
    assert meta["action"] == "promote_to_stable" and meta["status"] == "promoted", meta["reason"]
    _assert_promoted(world, "good", "cqox/engine:slow")


def test_a_canary_whose_error_ratio_rises_rolls_back_within_two_intervals(stack, world, instance):
    _policy, rollout = _start(stack, world, "bad")
    first, _ = _tick(stack, world, "bad", instance)
    second, _ = _tick(stack, world, "bad", instance)
    assert first["action"] == "hold" and "analysis failed (1 of 2)" in first["reason"]
    assert second["action"] == "rollback" and second["weight_after"] == 0
    # Item 6: the final materialization states what the release cost, per version.
    assert second["release_budget_slo"] == "availability" and second["release_budget_consumed"] > 1
    rows = {(r["version"], r["SLO"]): r for r in table_rows(second["per_version_slo"])}
    assert {("canary", "availability"), ("stable", "availability")} <= set(rows), rows
    assert rows[("canary", "availability")]["error ratio"] > rows[("stable", "availability")]["error ratio"]
    assert _weights(world, "bad") == {"v1": 100, "v2": 0}
    deployment = (
        world["kube"].apps().read_namespaced_deployment("cqox-engine-canary", world["scenarios"]["bad"]["namespace"])
    )
    assert deployment.spec.template.spec.containers[0].image == "cqox/engine:v1"  # image reverted
    # And in the daily per-version view: today's partition of slo_version_report (Dagster's clock moved to just
    # after midnight so today is a complete day; Prometheus and PostgreSQL answer for the real now).
    report = _version_report(stack, world, "bad")
    spent = report["canary_budget_consumed"][f"{rollout.rollout_id} on {datetime.now(UTC).date()}"]
    assert spent["slo"] == "availability" and spent["status"] == "rolled_back"
    assert spent["canary_budget_consumed"] > 1, spent  # 20 % errors: more than the period's whole budget
    assert report["max_canary_budget_consumed"] >= spent["canary_budget_consumed"]
    rows = table_rows(report["per_version"])
    assert {(r["rollout"], r["version"], r["SLO"]) for r in rows} >= {
        (rollout.rollout_id, "canary", "availability"),
        (rollout.rollout_id, "stable", "availability"),
    }, rows
    assert report["errors"] == []


def _version_report(stack, world, name: str) -> dict:
    from dagster._core.test_utils import freeze_time

    from assets.slo import slo_version_report

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with (
        mock.patch.dict(os.environ, _scenario_env(stack, world, name)),
        dg.instance_for_test() as instance,
        freeze_time(today + timedelta(days=1, minutes=5)),
    ):
        run = dg.materialize(
            [slo_version_report],
            partition_key=today.date().isoformat(),
            resources={"postgres": postgres_admin(stack), "prometheus": world["prometheus"]},
            instance=instance,
        )
    (event,) = run.asset_materializations_for_node("slo_version_report")
    return {k: v.value for k, v in event.metadata.items()}


def test_a_canary_that_never_failed_has_no_5xx_series_and_is_promoted(stack, world, instance):
    """Failed before: without a ``code=~"5.."`` series the policy's error ratio was an empty vector, "no data",
    so the healthy canary held and, past ``max_consecutive_holds``, was rolled back."""
    job = world["scenarios"]["clean"]["job"]
    assert world["prometheus"].query(f'http_requests_total{{job="{job}",code=~"5.."}}') == []
    _start(stack, world, "clean")
    meta, run_key = _tick(stack, world, "clean", instance)
    assert meta is not None, run_key
    assert (meta["action"], meta["weight_after"]) == ("promote", 50), meta["reason"]
    assert _weights(world, "clean") == {"v1": 50, "v2": 50}


def test_no_data_holds_and_past_the_limit_rolls_back(stack, world, instance):
    _start(stack, world, "silent")
    actions = [_tick(stack, world, "silent", instance)[0]["action"] for _ in range(3)]
    assert actions == ["hold", "hold", "rollback"]
    assert _weights(world, "silent")["v2"] == 0


def test_prometheus_down_holds_rather_than_promotes(stack, world, instance):
    _start(stack, world, "good")
    down = PrometheusResource(url=f"http://127.0.0.1:{free_port()}")
    meta, _ = _tick(stack, world, "good", instance, prometheus=down)
    assert meta["action"] == "hold" and "Prometheus unavailable" in meta["reason"] and meta["prometheus_ok"] is False
    assert _weights(world, "good")["v2"] == 10


def test_a_low_error_budget_stops_promotion_at_the_first_step(stack, world, instance):
    _start(stack, world, "burnt")
    meta, _ = _tick(stack, world, "burnt", instance)
    assert meta["action"] == "hold" and "error budget of availability" in meta["reason"]
    assert meta["budget_remaining"] < 0.25
    assert _weights(world, "burnt")["v2"] == 10


def _decisions(stack, rollout_id: str) -> list[tuple[str, str]]:
    with _conn(stack) as conn:
        return conn.execute(
            "SELECT outcome, action FROM canary_decisions WHERE rollout_id = %s ORDER BY decision_id", [rollout_id]
        ).fetchall()


def _decision_run_process(env: dict, request: dict, barrier, results) -> None:
    """A decision run in a process of its own, as a run worker launches it (Dagster's in-process execution is
    not safe from two threads of one process: its log handlers deadlock on the logging lock)."""
    os.environ.update(env)
    try:
        resources = {
            "postgres": PostgresResource(
                host=env["CQOX_PG_HOST"],
                port=int(env["CQOX_PG_PORT"]),
                dbname=env["CQOX_PG_DB"],
                user=env["CQOX_PG_USER"],
                sslrootcert=env["CQOX_PG_SSLROOTCERT"],
                passfile=env["CQOX_PG_PASSFILE"],
            ),
            "kubernetes": KubernetesResource(kubeconfig=env["CQOX_KUBECONFIG"]),
            "prometheus": PrometheusResource(url=env["CQOX_PROMETHEUS_URL"]),
        }
        with dg.instance_for_test() as own:
            own.add_dynamic_partitions(canary_partitions.name, [request["partition_key"]])
            barrier.wait(timeout=120)
            run = dg.materialize([canary_rollout], instance=own, resources=resources, **request)
        (event,) = run.asset_materializations_for_node("canary_rollout")
        results.put(
            {
                k: v.value
                for k, v in event.metadata.items()
                if k in ("outcome", "action", "reason", "weight_before", "weight_after")
            }
        )
    except BaseException as exc:
        results.put({"error": repr(exc)})


def test_two_decision_runs_for_one_interval_apply_once_and_the_other_is_recorded_stale(stack, world, instance):
    """Issue 13 item 2: the same interval's decision launched twice at once (a retry, a second daemon, a click in
    the UI), in two processes. Before, both decided on whatever state they found: 10 -> 50 -> 100 % at once."""
    import multiprocessing
    import queue

    _policy, rollout = _start(stack, world, "good")
    request, skipped = _sense(stack, world, "good", instance)
    assert request is not None, skipped
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    args = {"partition_key": request.partition_key, "run_config": request.run_config, "tags": request.tags}
    procs = [
        spawn.Process(target=_decision_run_process, args=(_scenario_env(stack, world, "good"), args, barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    metas = []
    try:
        for _ in procs:
            metas.append(results.get(timeout=300))
    except queue.Empty:
        pytest.fail(f"a decision run did not finish: {metas}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all("error" not in m for m in metas), metas
    assert _weights(world, "good") == {"v1": 50, "v2": 50}
    assert sorted(m["outcome"] for m in metas) == ["applied", "stale"]
    stale = next(m for m in metas if m["outcome"] == "stale")
    assert "stale" in stale["reason"] and stale["weight_after"] == stale["weight_before"] == 50
    with _conn(stack) as conn:
        assert get_rollout(conn, rollout.rollout_id).step_index == 1
    assert sorted(_decisions(stack, rollout.rollout_id)) == [("applied", "promote"), ("stale", "none")]


def test_a_stale_promote_cannot_skip_the_50_percent_observation_window(stack, world, instance):
    """The run of an interval, launched again after it promoted, finds a newer state: it changes nothing. A run
    forged for the new state (right version, launched from the UI at once) waits for the window."""
    _start(stack, world, "good")
    request, skipped = _sense(stack, world, "good", instance)
    assert request is not None, skipped
    first = _run(stack, world, "good", request, instance)
    assert (first["action"], first["weight_after"]) == ("promote", 50)
    again = _run(stack, world, "good", request, instance)
    assert _weights(world, "good")["v2"] == 50
    assert again["outcome"] == "stale" and again["weight_after"] == 50
    forged = dg.RunRequest(
        partition_key=request.partition_key,
        run_config={"ops": {"canary_rollout": {"config": {"state_version": first["state_version_after"]}}}},
        tags=request.tags,
    )
    early = _run(stack, world, "good", forged, instance)
    assert early["outcome"] == "stale" and "observation window" in early["reason"]
    assert _weights(world, "good")["v2"] == 50


def test_the_sensor_decides_with_the_policy_the_rollout_started_with(stack, world, instance):
    """`canary start --policy F` starts with F (it loads F and calls start_rollout, as here); the decisions
    must follow F too, not the policy file in the policy directory."""
    scenario = world["scenarios"]["good"]
    raw = yaml.safe_load((scenario["policies"] / "cqox-engine.yaml").read_text())
    policy_file = scenario["policies"] / "two-steps.yaml"
    policy_file.write_text(yaml.safe_dump({**raw, "steps": [25, 100]}))
    with _conn(stack) as conn:
        conn.execute("UPDATE canary_rollouts SET status = 'rolled_back' WHERE status = 'progressing'")
        start_rollout(conn, world["kube"], load_policy(policy_file), "cqox/engine:f")
    assert _weights(world, "good")["v2"] == 25
    meta, run_key = _tick(stack, world, "good", instance)
    assert meta is not None, run_key
    assert (meta["action"], meta["weight_after"]) == ("promote", 100), meta["reason"]
    assert _weights(world, "good")["v2"] == 100
    assert "two-steps.yaml" in meta["policy"]


class _RacingKube:
    """Lets another writer change the VirtualService right after our first read."""

    def __init__(self, kube: KubernetesResource, namespace: str) -> None:
        self.kube, self.namespace, self.raced = kube, namespace, False

    def get_custom(self, *args):
        vs = self.kube.get_custom(*args)
        if not self.raced:
            self.raced = True
            other = self.kube.get_custom(*args)
            other["spec"]["http"][1]["retries"] = {"attempts": 3}
            self.kube.replace_custom(*VS, other, self.namespace)
        return vs

    def replace_custom(self, *args):
        return self.kube.replace_custom(*args)


def test_a_concurrent_writers_change_survives_a_weight_change(stack, world):
    scenario = world["scenarios"]["good"]
    policy = load_policy(scenario["policies"] / "cqox-engine.yaml")
    change = shift_weights(_RacingKube(world["kube"], scenario["namespace"]), policy.kubernetes, 30)
    assert change.attempts == 2 and change.changed  # the first write hit 409 and was retried on a fresh read
    vs = world["kube"].get_custom(*VS, "cqox-engine", scenario["namespace"])
    primary = vs["spec"]["http"][1]
    assert primary["retries"] == {"attempts": 3} and primary["timeout"] == "30s"
    assert {d["destination"]["subset"]: d["weight"] for d in primary["route"]} == {"v1": 70, "v2": 30}
    assert vs["spec"]["http"][0]["name"] == "health"


def test_the_api_server_rejects_a_weight_of_150(stack, world):
    scenario = world["scenarios"]["good"]
    policy = load_policy(scenario["policies"] / "cqox-engine.yaml")
    with pytest.raises(KubernetesInvalidError, match="weight"):
        shift_weights(world["kube"], policy.kubernetes, 150)


def test_a_forbidden_identity_gets_a_clear_error_and_no_rollout_is_recorded(stack, world):
    scenario = world["scenarios"]["good"]
    policy = load_policy(scenario["policies"] / "cqox-engine.yaml")
    with _conn(stack) as conn:
        conn.execute("UPDATE canary_rollouts SET status = 'rolled_back' WHERE status = 'progressing'")
        with pytest.raises(KubernetesForbiddenError, match="cqox-restricted"):
            start_rollout(conn, _kube(stack, restricted=True), policy, "cqox/engine:nope")
        assert conn.execute("SELECT count(*) FROM canary_rollouts WHERE image = 'cqox/engine:nope'").fetchone() == (0,)


def test_backtest_replays_prometheus_history_through_the_policy(stack, world):
    import subprocess
    import sys
    from datetime import UTC, datetime

    scenario = world["scenarios"]["bad"]
    raw = yaml.safe_load((scenario["policies"] / "cqox-engine.yaml").read_text())
    policy_file = scenario["policies"] / "backtest.yaml"
    policy_file.write_text(yaml.safe_dump({**raw, "interval_seconds": 30}))
    begin = world["scraped_at"] - 30
    time.sleep(max(0.0, begin + 65 - time.time()))  # two whole intervals of history
    start = datetime.fromtimestamp(begin, UTC).isoformat()
    env = {
        **os.environ,
        **stack.env(),
        "CQOX_CANARY_POLICY_DIR": str(scenario["policies"]),
        "CQOX_SLO_SPEC": str(scenario["policies"] / "slos.yaml"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cqox_platform.cli",
            "canary",
            "backtest",
            "cqox-engine",
            "--start",
            start,
            "--policy",
            str(policy_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "analysis failed" in done.stdout and lines[-1].endswith("outcome: rolled_back"), done.stdout


# --- operator controls (issue 16 item 2) ---------------------------------------------------------------------


def _audit(stack, rollout_id: str) -> list[tuple[str, str, dict]]:
    with _conn(stack) as conn:
        return conn.execute(
            "SELECT user_id, action, details FROM audit_log WHERE resource = %s ORDER BY id", [rollout_id]
        ).fetchall()


def _cli(stack, world, name: str, *args: str):
    import subprocess
    import sys

    env = {**os.environ, **_scenario_env(stack, world, name)}
    # The admin login (passfile), as the other tests here: the Vault AppRole is vault_config's to create.
    env.pop("CQOX_PG_VAULT_ROLE", None)
    return subprocess.run(
        [sys.executable, "-m", "cqox_platform.cli", "canary", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_pause_skips_the_rollout_with_the_reason_and_resume_continues_it(stack, world, instance):
    from cqox_platform.canary.operator import operate

    _start(stack, world, "good")
    request, skipped = _sense(stack, world, "good", instance)  # requested before the pause
    assert request is not None, skipped
    done = _cli(stack, world, "good", "pause", request.partition_key, "--reason", "load test", "--who", "alice")
    assert done.returncode == 0, done.stderr
    assert "progressing -> paused" in done.stdout and "canary.pause by alice" in done.stdout
    # The run requested for the state before the pause is stale: the pause bumped the state version.
    meta = _run(stack, world, "good", request, instance)
    assert meta["outcome"] == "stale" and "paused" in meta["reason"]
    assert _weights(world, "good")["v2"] == 10
    again, reason = _sense(stack, world, "good", instance)
    assert again is None and "paused (pause by alice: load test)" in reason
    # Resume through the same core function the CLI and the job use; the sensor requests decisions again.
    with _conn(stack) as conn:
        operate(conn, world["kube"], request.partition_key, "resume", who="bob", reason="load test over")
    meta, _ = _tick(stack, world, "good", instance)
    assert (meta["outcome"], meta["action"], meta["weight_after"]) == ("applied", "promote", 50)
    user, action, details = _audit(stack, request.partition_key)[0]
    assert (user, action, details["reason"], details["outcome"]) == ("alice", "canary.pause", "load test", "applied")
    assert details["before"]["status"] == "progressing" and details["after"]["status"] == "paused"
    assert details["after"]["state_version"] == details["before"]["state_version"] + 1
    assert [(u, a) for u, a, _ in _audit(stack, request.partition_key)] == [
        ("alice", "canary.pause"),
        ("bob", "canary.resume"),
    ]
    refused = _cli(stack, world, "good", "resume", request.partition_key, "--reason", "twice", "--who", "bob")
    assert refused.returncode == 1 and "cannot resume the rollout: it is progressing" in refused.stderr
    assert _audit(stack, request.partition_key)[-1][2]["outcome"] == "refused"


def test_abort_rolls_back_like_a_failed_analysis_and_is_audited(stack, world, instance):
    _policy, rollout = _start(stack, world, "good", image="cqox/engine:abort-me")
    meta, _ = _tick(stack, world, "good", instance)
    assert meta["weight_after"] == 50
    done = _cli(stack, world, "good", "abort", rollout.rollout_id, "--reason", "customer complaints", "--who", "carol")
    assert done.returncode == 0, done.stderr
    assert _weights(world, "good") == {"v1": 100, "v2": 0}
    _stable, canary = _deployments(world, "good")
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == rollout.previous_image
    with _conn(stack) as conn:
        after = get_rollout(conn, rollout.rollout_id)
    assert (after.status, after.weight, after.last_decision) == ("rolled_back", 0, "operator_abort")
    (user, action, details), *_ = _audit(stack, rollout.rollout_id)
    assert (user, action) == ("carol", "canary.abort")
    assert details["before"]["weight"] == 50 and details["after"]["status"] == "rolled_back"
    status = _cli(stack, world, "good", "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    jsonschema.Draft202012Validator(load_schema("canary-status"), format_checker=jsonschema.FormatChecker()).validate(
        document
    )
    (shown,) = (r for r in document["rollouts"] if r["rollout_id"] == rollout.rollout_id)
    assert (shown["status"], shown["weight"], shown["last_decision"]) == ("rolled_back", 0, "operator_abort")
    meta, reason = _tick(stack, world, "good", instance)
    assert meta is None and "no canary rollout" in reason


def test_force_promote_from_the_ui_job_promotes_to_stable_without_analysis(stack, world, instance):
    from assets.canary import canary_operator_jobs

    _policy, rollout = _start(stack, world, "good", image="cqox/engine:forced")
    assert _weights(world, "good")["v2"] == 10
    with _conn(stack) as conn:  # a rollout that ran for a while: its window holds scraped traffic
        conn.execute(
            "UPDATE canary_rollouts SET started_at = now() - interval '2 minutes' WHERE rollout_id = %s",
            [rollout.rollout_id],
        )
    job = next(j for j in canary_operator_jobs if j.name == "canary_promote_job")
    resources = {"postgres": postgres_admin(stack), "kubernetes": world["kube"], "prometheus": world["prometheus"]}
    config = {"rollout": rollout.rollout_id, "reason": "hotfix", "requested_by": "dave"}
    with mock.patch.dict(os.environ, _scenario_env(stack, world, "good")):
        result = job.execute_in_process(
            run_config={"ops": {"canary_promote": {"config": config}}}, resources=resources, instance=instance
        )
    assert result.success
    (event,) = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert event.partition == rollout.rollout_id and event.asset_key == canary_rollout.key
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["status"] == "promoted" and meta["promotion"] == "promoted to stable"
    assert 0 <= meta["release_budget_consumed"] < 1
    assert ("canary", "availability") in {(r["version"], r["SLO"]) for r in table_rows(meta["per_version_slo"])}
    _assert_promoted(world, "good", "cqox/engine:forced")
    (user, action, details), *_ = _audit(stack, rollout.rollout_id)
    assert (user, action, details["reason"]) == ("dave", "canary.promote", "hotfix")
    assert (details["before"]["status"], details["after"]["status"]) == ("progressing", "promoted")


# --- gates (issue 16 item 3) ---------------------------------------------------------------------------------


def _policy_file(world, name: str, file: str, **changes) -> Path:
    scenario = world["scenarios"][name]
    raw = yaml.safe_load((scenario["policies"] / "cqox-engine.yaml").read_text())
    path = scenario["policies"] / file
    path.write_text(yaml.safe_dump({**raw, **changes}))
    return path


GATED_STEPS = [10, {"weight": 50, "confirm": True}, 100]


def test_a_confirm_step_waits_for_approval_then_promotes(stack, world, instance):
    policy_file = _policy_file(world, "good", "gated.yaml", steps=GATED_STEPS, confirm_timeout_seconds=3600)
    _policy, rollout = _start(stack, world, "good", image="cqox/engine:gated", policy_file=policy_file)
    for _ in range(2):  # holds every interval, not counted against the canary
        meta, _ = _tick(stack, world, "good", instance)
        assert meta["action"] == "hold" and "needs a person's approval" in meta["reason"], meta["reason"]
        assert meta["consecutive_holds"] == 0 and _weights(world, "good")["v2"] == 10
    with _conn(stack) as conn:
        waiting_since = get_rollout(conn, rollout.rollout_id).awaiting_approval_since
    assert waiting_since is not None
    done = _cli(
        stack, world, "good", "approve", rollout.rollout_id, "--reason", "dashboards look fine", "--who", "erin"
    )
    assert done.returncode == 0, done.stderr
    meta, _ = _tick(stack, world, "good", instance)
    assert (meta["action"], meta["weight_after"]) == ("promote", 50), meta["reason"]
    assert _weights(world, "good")["v2"] == 50
    (user, action, details), *_ = _audit(stack, rollout.rollout_id)
    assert (user, action, details["after"]["approved_step"]) == ("erin", "canary.approve", 1)


def test_a_confirm_step_without_approval_rolls_back_at_its_timeout(stack, world, instance):
    policy_file = _policy_file(
        world, "good", "gated-timeout.yaml", steps=GATED_STEPS, confirm_timeout_seconds=2, on_confirm_timeout="rollback"
    )
    _start(stack, world, "good", image="cqox/engine:unapproved", policy_file=policy_file)
    meta, _ = _tick(stack, world, "good", instance)
    assert meta["action"] == "hold" and "needs a person's approval" in meta["reason"]
    time.sleep(2.5)
    meta, _ = _tick(stack, world, "good", instance)
    assert meta["action"] == "rollback" and "no approval for 50 % within 2 s" in meta["reason"], meta["reason"]
    assert _weights(world, "good") == {"v1": 100, "v2": 0}


# --- webhooks (issue 16 item 4) ------------------------------------------------------------------------------


def _hooks(receiver) -> list[dict]:
    return [
        {
            "name": "load-test",
            "type": "pre-step",
            "url": receiver.url("/load-test"),
            "timeout_seconds": 2,
            "retries": 1,
            "on_failure": "block",
        },
        {
            "name": "rollback-page",
            "type": "rollback",
            "url": receiver.url("/rollback"),
            "timeout_seconds": 2,
            "retries": 1,
        },
        {"name": "notify", "type": "post-rollout", "url": receiver.url("/notify"), "retries": 0},
        {"name": "gate-keeper", "type": "pre-rollout", "url": receiver.url("/pre"), "retries": 0},
    ]


def test_a_failing_pre_step_webhook_blocks_the_step_until_it_passes(stack, world, instance):
    from tests.webhook_receiver import WebhookReceiver

    with WebhookReceiver() as receiver:
        policy_file = _policy_file(world, "good", "hooks.yaml", webhooks=_hooks(receiver))
        receiver.fail("/pre")
        with pytest.raises(Exception, match="pre-rollout webhook gate-keeper: FAILED"):
            _start(stack, world, "good", image="cqox/engine:hooked", policy_file=policy_file)
        receiver.heal()
        _policy, rollout = _start(stack, world, "good", image="cqox/engine:hooked", policy_file=policy_file)
        receiver.fail("/load-test")
        meta, _ = _tick(stack, world, "good", instance)
        assert meta["action"] == "hold" and "pre-step webhook load-test: FAILED after 2 attempt(s)" in meta["reason"]
        hooks = {r["webhook"]: r for r in table_rows(meta["webhooks"])}
        assert hooks["load-test"]["outcome"] == "failed" and hooks["load-test"]["attempts"] == 2
        assert _weights(world, "good")["v2"] == 10
        receiver.heal()
        meta, _ = _tick(stack, world, "good", instance)
        assert (meta["action"], meta["weight_after"]) == ("promote", 50), meta["reason"]
        body = receiver.calls["/load-test"][-1]
        assert (body["rollout"], body["step_index"], body["weight"], body["decision"]) == (
            rollout.rollout_id,
            1,
            50,
            "promote",
        )


def test_a_failing_rollback_webhook_does_not_block_the_rollback(stack, world, instance):
    from tests.webhook_receiver import WebhookReceiver

    with WebhookReceiver() as receiver:
        policy_file = _policy_file(world, "bad", "hooks.yaml", webhooks=_hooks(receiver))
        _start(stack, world, "bad", policy_file=policy_file)
        receiver.fail("/rollback")
        metas = [_tick(stack, world, "bad", instance)[0] for _ in range(2)]
        assert metas[-1]["action"] == "rollback" and metas[-1]["status"] == "rolled_back"
        assert _weights(world, "bad") == {"v1": 100, "v2": 0}
        outcomes = {r["webhook"]: r["outcome"] for r in table_rows(metas[-1]["webhooks"])}
        assert outcomes["rollback-page"] == "failed" and outcomes["notify"] == "ok"
        assert len(receiver.calls["/rollback"]) == 2 and receiver.calls["/notify"][-1]["decision"] == "rollback"
