"""deploy/dagster/dagster.yaml: its K8sRunLauncher launches a run as a valid Job on the real API server.

The instance is built from the production file as it is, but for two settings a test outside a cluster must
change: the launcher reads the stack's kubeconfig instead of in-cluster credentials, and the environment points
the PostgreSQL storage at a fresh database of the stack (over verified TLS, as in production). Then dagster-k8s's
own ``launch_run`` creates the Job; the API server validates it and the Job controller makes its pod, which stays
Pending (no kubelet here). The test reads both back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import LaunchRunContext
from dagster_k8s import K8sRunLauncher
from kubernetes import client as k8s

from cqox_platform.deploy.manifests import MANIFEST_DIR, render
from cqox_platform.resources.kubernetes import KubernetesResource
from cqox_platform.stack import Stack

PROJECT = Path(__file__).resolve().parents[2]
PRODUCTION_YAML = PROJECT / "deploy" / "dagster" / "dagster.yaml"


@pytest.fixture(scope="module")
def kube(stack: Stack) -> Iterator[KubernetesResource]:
    resource = KubernetesResource(kubeconfig=stack.env()["CQOX_KUBECONFIG"])
    yield resource
    resource.close()


@pytest.fixture
def production_instance(stack, plain_db, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=stack.env()["CQOX_KUBECONFIG"])
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    info = plain_db.resource
    password = Path(info.passfile).read_text().strip().rsplit(":", 1)[1]
    for name, value in {
        "DAGSTER_PG_HOST": info.host,
        "DAGSTER_PG_PORT": str(info.port),
        "DAGSTER_PG_USER": info.user,
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_DB": info.dbname,
        "PGSSLROOTCERT": info.sslrootcert,
    }.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        yield instance
    finally:
        instance.dispose()


def test_production_yaml_launches_a_run_as_a_valid_job(kube, production_instance, plain_db):
    launcher_config = yaml.safe_load(PRODUCTION_YAML.read_text())["run_launcher"]["config"]
    launcher = production_instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    namespace = launcher.job_namespace
    assert namespace == launcher_config["job_namespace"] == "cqox"
    # The instance's own storage is the PostgreSQL of the file (dagster-postgres), not a local default.
    assert type(production_instance.run_storage).__name__ == "PostgresRunStorage"

    # The namespace as the deploy assets make it, and the run's service account (without it the Job controller
    # would refuse to make the pod, though the Job itself is valid).
    (namespace_manifest,) = render(MANIFEST_DIR / "namespace.yaml", {"NAMESPACE": namespace})
    kube.apply(namespace_manifest)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": launcher_config["service_account_name"], "namespace": namespace},
        }
    )

    repository = ReconstructableRepository.for_module(
        "cqox_platform.definitions", "defs", working_directory=str(PROJECT)
    )
    job = repository.get_reconstructable_job("__ASSET_JOB")
    run = production_instance.create_run_for_job(
        job_def=job.get_definition(),
        asset_selection={dg.AssetKey("k8s_namespace")},
        job_code_origin=job.get_python_origin(),
    )
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    name = f"dagster-run-{run.run_id}"
    batch = k8s.BatchV1Api(kube.api_client())
    try:
        created = kube.call(f"reading Job {name}", lambda: batch.read_namespaced_job(name, namespace))
        assert created.metadata.uid  # stored: the API server accepted the Job
        labels = created.metadata.labels
        assert labels["dagster/run-id"] == run.run_id
        assert labels["app.kubernetes.io/component"] == "run_worker"
        assert labels["app.kubernetes.io/part-of"] == "cqox-platform"
        assert created.spec.backoff_limit == 0
        assert created.spec.ttl_seconds_after_finished == 86400

        pod_spec = created.spec.template.spec
        assert pod_spec.service_account_name == launcher_config["service_account_name"]
        assert pod_spec.restart_policy == "Never"
        (container,) = pod_spec.containers
        assert container.image == launcher_config["job_image"]
        assert container.image_pull_policy == "IfNotPresent"
        assert container.args[:3] == ["dagster", "api", "execute_run"]
        assert run.run_id in container.args[3]  # the serialized ExecuteRunArgs
        assert [source.secret_ref.name for source in container.env_from] == launcher_config["env_secrets"]
        env = {e.name: e for e in container.env}
        assert env["DAGSTER_HOME"].value == launcher_config["dagster_home"]
        assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name == launcher_config["postgres_password_secret"]
        assert env["DAGSTER_PG_HOST"].value == "cqox-postgres-cluster-rw.cqox.svc"
        assert container.security_context.run_as_non_root is True
        assert container.security_context.allow_privilege_escalation is False
        assert container.volume_mounts[0].mount_path == "/etc/cqox/postgres-ca"
        assert pod_spec.volumes[0].secret.secret_name == "cqox-postgres-cluster-ca"
        # No secret in what the pod runs: the storage password reaches it from a Secret, by reference.
        assert env["DAGSTER_PG_PASSWORD"].value is None
        assert Path(plain_db.resource.passfile).read_text().strip().rsplit(":", 1)[1] not in " ".join(container.args)

        # The Job controller turns the template into a pod the API server validates (Pending: no kubelet).
        core = k8s.CoreV1Api(kube.api_client())
        deadline = time.monotonic() + 60
        pods = []
        while time.monotonic() < deadline:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            if pods:
                break
            time.sleep(0.5)
        assert pods, f"the Job controller made no pod for {name} within 60 s"
        assert pods[0].spec.service_account_name == launcher_config["service_account_name"]
        assert pods[0].spec.containers[0].image == launcher_config["job_image"]

        # The launcher recorded its work in the run's event log, in the production storage.
        logs = production_instance.all_logs(run.run_id)
        assert any("Kubernetes run worker job" in (e.message or "") for e in logs)
    finally:
        kube.call(
            f"deleting Job {name}",
            lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
        )
