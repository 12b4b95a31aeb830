"""The production instance configs against the local one, and the Helm values against the chart's schema.

Three files say how many runs may run at once, how pools limit steps and how many threads the daemon's sensors
and schedules use: the local stack's instance config (what every test and ``run-main`` exercise),
``deploy/dagster/dagster.yaml`` (a cluster installed by hand) and ``deploy/helm/values.yaml`` (a cluster installed
with Dagster's Helm chart, which renders the instance config from the values). A limit that holds locally but
not in production is the kind of drift nobody sees until a second backup fails on the advisory lock, so the
three must agree, and Dagster itself must accept each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from jsonschema import Draft7Validator

from cqox_platform.stack.dagster_services import INSTANCE_CONFIG

PROJECT = Path(__file__).resolve().parents[3]
PRODUCTION_YAML = PROJECT / "deploy" / "dagster" / "dagster.yaml"
HELM_VALUES = PROJECT / "deploy" / "helm" / "values.yaml"
HELM_SCHEMA = PROJECT / "deploy" / "helm" / "schema" / "dagster-values.schema.json"

#: The instance-config sections that decide what runs when: run limits and pools, and the daemon's threads.
SHARED_SECTIONS = ("concurrency", "sensors", "schedules")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _helm_instance(values: dict[str, Any]) -> dict[str, Any]:
    """The shared sections of the instance config the chart renders from ``values``.

    The chart writes ``dagsterDaemon.sensors`` and ``.schedules`` as ``sensors``/``schedules`` (camelCase keys
    in snake_case) and appends ``additionalInstanceConfig`` to the file as it is.
    """
    daemon = values["dagsterDaemon"]
    rendered = {
        section: {"use_threads": daemon[section]["useThreads"], "num_workers": daemon[section]["numWorkers"]}
        for section in ("sensors", "schedules")
    }
    rendered.update(copy.deepcopy(values.get("additionalInstanceConfig") or {}))
    return rendered


@pytest.mark.parametrize("section", SHARED_SECTIONS)
def test_production_instance_config_agrees_with_the_local_one(section):
    local, production = _load(INSTANCE_CONFIG), _load(PRODUCTION_YAML)
    assert section in local, f"{INSTANCE_CONFIG} has no {section!r} section"
    assert production.get(section) == local[section], (
        f"{PRODUCTION_YAML.relative_to(PROJECT)} section {section!r} differs from the local stack's "
        f"{INSTANCE_CONFIG.name}: production {production.get(section)!r}, local {local[section]!r}"
    )


@pytest.mark.parametrize("section", SHARED_SECTIONS)
def test_helm_values_render_the_same_instance_sections(section):
    local, helm = _load(INSTANCE_CONFIG), _helm_instance(_load(HELM_VALUES))
    assert helm.get(section) == local[section], (
        f"deploy/helm/values.yaml renders {section!r} as {helm.get(section)!r}; the local stack has {local[section]!r}"
    )


def test_no_instance_config_uses_the_legacy_run_queue():
    """``run_queue`` and ``concurrency`` are two forms of one setting, and Dagster refuses both at once; the
    chart's queued run coordinator would be a third, so its own limits stay unset."""
    for path in (INSTANCE_CONFIG, PRODUCTION_YAML):
        assert "run_queue" not in _load(path), f"{path} still uses run_queue; move it to concurrency.runs"
    queued = _load(HELM_VALUES)["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] or {}
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued), (
        "deploy/helm/values.yaml sets run limits on the queued run coordinator; they belong in "
        "additionalInstanceConfig.concurrency.runs"
    )


@pytest.mark.parametrize("path", [INSTANCE_CONFIG, PRODUCTION_YAML], ids=["local", "production"])
def test_dagster_accepts_the_instance_config(path, tmp_path, monkeypatch):
    # The storage settings come from the environment in both files; Dagster resolves them while validating.
    for name in (
        "CQOX_PG_USER",
        "CQOX_PG_HOST",
        "CQOX_DAGSTER_PG_DB",
        "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_DB",
    ):
        monkeypatch.setenv(name, "x")
    for name in ("CQOX_PG_PORT", "DAGSTER_PG_PORT"):
        monkeypatch.setenv(name, "5432")
    (tmp_path / "dagster.yaml").write_text(path.read_text())
    try:
        dagster_instance_config(str(tmp_path))
    except DagsterInvalidConfigError as exc:
        pytest.fail(f"Dagster refuses {path}: {exc}")


def test_the_instance_the_chart_renders_queues_runs_and_steps_as_the_local_one(tmp_path):
    """The chart writes a queued run coordinator (with the values' own limits, none here) and appends
    ``additionalInstanceConfig``: the limits the daemon dequeues with must be the local stack's."""
    values = _load(HELM_VALUES)
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] or {}
    rendered = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": queued,
        },
        **values["additionalInstanceConfig"],
    }
    for home, config in (("helm", rendered), ("local", _load(INSTANCE_CONFIG))):
        config.pop("storage", None)
        (tmp_path / home).mkdir()
        (tmp_path / home / "dagster.yaml").write_text(yaml.safe_dump(config))
    helm = DagsterInstance.from_config(str(tmp_path / "helm"))
    local = DagsterInstance.from_config(str(tmp_path / "local"))
    try:
        assert helm.get_concurrency_config() == local.get_concurrency_config()
        queue = helm.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert helm.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        helm.dispose()
        local.dispose()


# --- the chart's values schema ----------------------------------------------------------------------------------


def _validator() -> Draft7Validator:
    schema = json.loads(HELM_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _errors(values: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in _validator().iter_errors(values)]


def test_helm_values_validate_against_the_chart_schema():
    assert _errors(_load(HELM_VALUES)) == []


def test_the_user_deployment_serves_the_platform_from_its_image():
    (deployment,) = _load(HELM_VALUES)["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "cqox_platform.definitions"]
    assert {"name": "cqox-platform-env"} in deployment["envSecrets"]
    assert deployment["resources"]["limits"]["memory"]
    launcher = _load(HELM_VALUES)["runLauncher"]["config"]["k8sRunLauncher"]
    scratch = next(v for v in launcher["volumes"] if v["name"] == "scratch")
    assert "ephemeral" in scratch or "emptyDir" in scratch
    assert {"name": "scratch", "mountPath": "/scratch"} in launcher["volumeMounts"]
    assert "TMPDIR=/scratch" in launcher["envVars"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        # A misspelled run-launcher key: the chart's K8sRunLauncherConfig is closed.
        (lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(envSecret=[]), "runLauncher.config"),
        (lambda v: v["dagster-user-deployments"]["deployments"][0]["image"].update(pullPolicy="Sometimes"), "image"),
        (lambda v: v["dagster-user-deployments"]["deployments"][0].pop("port"), "deployments.0"),
        (lambda v: v["dagsterDaemon"]["runCoordinator"].update(type="FifoRunCoordinator"), "runCoordinator"),
        (lambda v: v.update(dagsterWebServer={}), "<top>"),
    ],
    ids=["misspelled-launcher-key", "unknown-pull-policy", "no-port", "unknown-coordinator", "unknown-top-level"],
)
def test_the_schema_refuses_what_the_chart_refuses(change, where):
    values = _load(HELM_VALUES)
    change(values)
    errors = _errors(values)
    assert errors, "the schema accepted values the chart refuses"
    assert any(where in e for e in errors), errors
