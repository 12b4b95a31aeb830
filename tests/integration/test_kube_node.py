"""Run pods on a real node: the stack's ``--kube-node`` (containerd, kubelet, kube-scheduler) runs the platform image,
and dagster-k8s's ``K8sRunLauncher`` runs a base backup as a Job whose pod finishes with the backup recorded.

Opt-in (``CQOX_KUBE_NODE=1 ./scripts/test.sh``, which runs ``scripts/build-node.sh`` first): the module starts its
own stack with the node and imports the ~450 MiB platform image into containerd, 5 to 9 minutes on a busy
2-core machine, too much for every run. Opted in, missing binaries or a missing image archive fail the test
instead of skipping it.

The Job is launched from ``deploy/dagster/dagster.yaml`` as it is, except for what a pod on the stack's node
needs instead of a cluster's services: host networking (the stack listens on 127.0.0.1, and the node has no pod
network), the instance database at 127.0.0.1 rather than the CloudNativePG Service, and the stack directory
mounted at its own path, read by root, because the stack's environment (``cqox-platform-env``) names files
there (credentials, CA, archiver settings) that are owner-only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import LaunchRunContext
from dagster_k8s import K8sRunLauncher
from kubernetes import client as k8s
from kubernetes import config as kube_config

from cqox_platform.schema import MigrationRunner
from cqox_platform.stack import Stack
from cqox_platform.stack.kube.build import kube_build
from cqox_platform.stack.kube.node import ContainerdService
from cqox_platform.stack.kube.pki import NODE_NAME
from tests.helpers import REPO_ROOT, materialize_vault_config, postgres_admin, running_stack

PRODUCTION_YAML = REPO_ROOT / "deploy" / "dagster" / "dagster.yaml"

pytestmark = pytest.mark.skipif(
    os.environ.get("CQOX_KUBE_NODE") != "1",
    reason="a Kubernetes node is opt-in (5 to 9 min): CQOX_KUBE_NODE=1 ./scripts/test.sh builds and runs it",
)


@pytest.fixture(scope="module")
def node_stack() -> Iterator[Stack]:
    build = kube_build()
    for needed, how in (
        (build.node_bin_dir / "kubelet", "./scripts/build-node.sh"),
        (build.pause_archive, "./scripts/build-node.sh"),
        (build.platform_image_archive, "./scripts/build-image.sh"),
    ):
        if not needed.exists():
            pytest.fail(f"CQOX_KUBE_NODE=1 but {needed} is missing: run {how}")
    with running_stack("cqox-test-node-stack-", with_dagster=False, with_kube_node=True) as st:
        yield st


@pytest.fixture(scope="module")
def api(node_stack: Stack) -> Iterator[k8s.ApiClient]:
    client = kube_config.new_client_from_config(config_file=node_stack.env()["CQOX_KUBECONFIG"])
    yield client
    client.close()


def wait_for(what: str, probe, timeout: float = 300):
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {value!r})")


def pod_phase(core: k8s.CoreV1Api, namespace: str, name: str, phases: set[str]) -> k8s.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in phases else None


def test_the_node_is_ready_and_runs_the_platform_image(node_stack, api):
    core = k8s.CoreV1Api(api)
    node = core.read_node(NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True", node.status.conditions
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == kube_build().kubernetes_version

    image = ContainerdService.platform_image()
    assert image, "the platform image archive has no summary (cqox-platform.oci.json)"
    pod = core.create_namespaced_pod(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "image-probe-"},
            "spec": {
                "hostNetwork": True,
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "Never",  # imported into containerd: no registry is reachable
                        "command": ["cqox-platform", "--version"],
                    }
                ],
            },
        },
    )
    name = pod.metadata.name
    done = wait_for(f"pod {name} to finish", lambda: pod_phase(core, "default", name, {"Succeeded", "Failed"}))
    assert done.spec.node_name == NODE_NAME  # bound by kube-scheduler
    assert done.status.phase == "Succeeded", (done.status.container_statuses, done.status.message)
    # kubelet writes the container's output under its pod log directory: <namespace>_<pod>_<uid>/<container>/.
    log = Path(node_stack.env()["CQOX_KUBE_POD_LOGS"]) / f"default_{name}_{done.metadata.uid}" / "main" / "0.log"
    version = image.rsplit(":", 1)[1]
    assert f"stdout F cqox-platform {version}" in log.read_text()


@pytest.fixture
def prepared(node_stack: Stack) -> Iterator[dict[str, str]]:
    """What the base backup needs of the stack (Vault configured, the schema migrated), in the environment."""
    env = node_stack.env()
    with mock.patch.dict(os.environ, env):
        assert materialize_vault_config(node_stack).success
        with postgres_admin(node_stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        yield env


def test_k8s_run_launcher_runs_a_base_backup_as_a_job_on_the_node(node_stack, api, prepared, tmp_path, monkeypatch):
    env = prepared
    core, batch = k8s.CoreV1Api(api), k8s.BatchV1Api(api)
    production = yaml.safe_load(PRODUCTION_YAML.read_text())
    launcher_config = production["run_launcher"]["config"]
    namespace = launcher_config["job_namespace"]
    password = Path(env["CQOX_PG_PASSFILE"]).read_text().strip().rsplit(":", 1)[1]

    # The objects the production config names, filled from the stack.
    core.create_namespace({"metadata": {"name": namespace}})
    objects = [
        (core.create_namespaced_service_account, {"metadata": {"name": launcher_config["service_account_name"]}}),
        (core.create_namespaced_secret, {"metadata": {"name": "cqox-platform-env"}, "stringData": env}),
        (
            core.create_namespaced_secret,
            {
                "metadata": {"name": launcher_config["postgres_password_secret"]},
                "stringData": {"postgresql-password": password},
            },
        ),
        (
            core.create_namespaced_secret,
            {
                "metadata": {"name": "cqox-postgres-cluster-ca"},
                "stringData": {"ca.crt": Path(env["CQOX_PG_SSLROOTCERT"]).read_text()},
            },
        ),
        (
            core.create_namespaced_config_map,
            {
                "metadata": {"name": launcher_config["instance_config_map"]},
                "data": {"dagster.yaml": yaml.safe_dump({k: v for k, v in production.items() if k != "run_launcher"})},
            },
        ),
    ]
    for create, body in objects:
        create(namespace, body)

    root = str(node_stack.config.root)
    image = ContainerdService.platform_image()
    assert image
    launcher_config.update(
        load_incluster_config=False,
        kubeconfig_file=env["CQOX_KUBECONFIG"],
        job_image=image,
        env_vars=[
            "DAGSTER_PG_HOST=127.0.0.1",
            f"DAGSTER_PG_PORT={env['CQOX_PG_PORT']}",
            f"DAGSTER_PG_USER={env['CQOX_PG_USER']}",
            f"DAGSTER_PG_DB={env['CQOX_DAGSTER_PG_DB']}",
            "PGSSLROOTCERT=/etc/cqox/postgres-ca/ca.crt",
        ],
        security_context={"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False},
    )
    launcher_config["volumes"].append({"name": "stack", "hostPath": {"path": root, "type": "Directory"}})
    launcher_config["volume_mounts"].append({"name": "stack", "mountPath": root})
    launcher_config["run_k8s_config"]["pod_spec_config"] = {
        "host_network": True,
        "dns_policy": "ClusterFirstWithHostNet",
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(production))
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": env["CQOX_PG_PORT"],
        "DAGSTER_PG_USER": env["CQOX_PG_USER"],
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_DB": env["CQOX_DAGSTER_PG_DB"],
        "PGSSLROOTCERT": env["CQOX_PG_SSLROOTCERT"],
    }.items():
        monkeypatch.setenv(name, value)

    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        repository = ReconstructableRepository.for_module("cqox_platform.definitions", "defs", working_directory="/")
        job = repository.get_reconstructable_job("__ASSET_JOB")
        run = instance.create_run_for_job(
            job_def=job.get_definition(),
            asset_selection={dg.AssetKey("postgres_basebackup")},
            job_code_origin=job.get_python_origin(),
        )
        instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

        job_name = f"dagster-run-{run.run_id}"
        finished = wait_for(
            f"Job {job_name} to finish",
            lambda: (lambda s: s if (s.succeeded or s.failed) else None)(
                batch.read_namespaced_job_status(job_name, namespace).status
            ),
            timeout=600,
        )
        (pod,) = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        final = instance.get_run_by_id(run.run_id)
        failures = [
            e.dagster_event.event_specific_data.error.to_string()
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        assert finished.succeeded == 1, (final.status, failures, pod.status)
        assert pod.spec.node_name == NODE_NAME
        assert pod.status.phase == "Succeeded"
        assert final.status == dg.DagsterRunStatus.SUCCESS, failures

        (materialization,) = [
            e.asset_materialization
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        ]
        assert materialization.asset_key == dg.AssetKey("postgres_basebackup")
        backup_id = materialization.metadata["backup_id"].value
        with psycopg.connect(env["CQOX_PG_DSN"]) as conn:
            row = conn.execute("SELECT backup_id FROM backups WHERE backup_id = %s", (backup_id,)).fetchone()
        assert row == (backup_id,), f"backup {backup_id} is not recorded in the backups table"
    finally:
        instance.dispose()
