"""Group ``deploy`` wired end to end against an in-memory API server: apply, metadata, drift check."""

from __future__ import annotations

import dagster as dg
import pytest

from assets import deploy
from tests.unit.fakes import FakeKubernetes

ALL = [*deploy.deploy_assets, *deploy.deploy_checks]


@pytest.fixture
def kubernetes() -> FakeKubernetes:
    FakeKubernetes.reset()
    return FakeKubernetes()


def materialization(result: dg.ExecuteInProcessResult, name: str) -> dict:
    (event,) = result.asset_materializations_for_node(name)
    return event.metadata


def test_every_manifest_applies_and_its_check_passes(kubernetes: FakeKubernetes) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(ALL, resources={"kubernetes": kubernetes}, instance=instance)
    assert result.success
    for spec in deploy.MANIFEST_ASSETS:
        metadata = materialization(result, spec.name)
        objects = len(spec.manifests(deploy.ManifestConfig().values()))
        assert metadata["created"].value == objects, spec.name
        assert metadata["updated"].value == metadata["unchanged"].value == 0
        assert metadata["api_server"].value == "memory://fake-kubernetes"
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {deploy.CHECK_NAME}
    assert len(checks) == len(deploy.MANIFEST_ASSETS) and all(c.passed for c in checks)

    again = dg.materialize(ALL, resources={"kubernetes": kubernetes}, instance=instance)
    namespace = materialization(again, "k8s_namespace")
    assert (namespace["created"].value, namespace["unchanged"].value) == (0, 1)


def test_run_config_renders_into_the_applied_objects(kubernetes: FakeKubernetes) -> None:
    config = {"namespace": "cqox-staging", "engine_image": "cqox/engine:2.0.0"}
    result = dg.materialize(
        [deploy.deploy_assets[0], deploy.deploy_assets[1]],
        resources={"kubernetes": kubernetes},
        run_config={"ops": {name: {"config": config} for name in ("k8s_namespace", "k8s_engine_workloads")}},
    )
    assert result.success
    assert materialization(result, "k8s_engine_workloads")["render_values"].value["NAMESPACE"] == "cqox-staging"
    images = [
        c["image"]
        for (_, kind, namespace, _), obj in FakeKubernetes.objects.items()
        if kind == "Deployment" and namespace == "cqox-staging"
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]
    assert "cqox/engine:2.0.0" in images


def test_a_hand_edit_fails_the_drift_check(kubernetes: FakeKubernetes) -> None:
    instance = dg.DagsterInstance.ephemeral()
    hpa = next(a for a in deploy.deploy_assets if a.key.path[-1] == "k8s_engine_hpa")
    check = next(c for c in deploy.deploy_checks if hpa.key in {k.asset_key for k in c.check_keys})
    assert dg.materialize([hpa, check], resources={"kubernetes": kubernetes}, instance=instance).success
    (key,) = [k for k in FakeKubernetes.objects if k[1] == "HorizontalPodAutoscaler" and k[-1] == "cqox-engine"]
    FakeKubernetes.objects[key]["spec"]["maxReplicas"] = 99  # kubectl edit

    result = dg.materialize(
        [hpa, check], resources={"kubernetes": kubernetes}, instance=instance, selection=dg.AssetSelection.checks(check)
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert any("maxReplicas" in path for path in evaluation.metadata["drifted_paths"].value)
