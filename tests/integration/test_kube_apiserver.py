"""The stack's Kubernetes API server: the pinned release, CRD validation, RBAC, and a controller manager."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from cqox_platform.stack import Stack
from cqox_platform.stack.kube.build import kube_build
from cqox_platform.stack.kube.pki import kube_pki


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[client.ApiClient]:
    api_client = kube_config.new_client_from_config(config_file=stack.env()["CQOX_KUBECONFIG"])
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(admin: client.ApiClient) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_version_is_the_pinned_release(admin):
    info = client.VersionApi(admin).get_code()
    assert info.git_version == kube_build().kubernetes_version
    assert info.major == "1"
    assert f"v1.{info.minor}." in info.git_version


def test_deployment_gets_a_replicaset_from_the_controller_manager(admin, namespace):
    labels = {"app": "cqox-engine"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="cqox-engine"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="engine", image="cqox/engine:1.0")]),
            ),
        ),
    )
    apps = client.AppsV1Api(admin)
    created = apps.create_namespaced_deployment(namespace, deployment)
    assert created.metadata.uid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sets = apps.list_namespaced_replica_set(namespace).items
        if sets and sets[0].status.replicas == 2:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"no ReplicaSet with 2 replicas for the Deployment after 30 s: {sets}")
    owner = sets[0].metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("Deployment", "cqox-engine", created.metadata.uid)
    pods = client.CoreV1Api(admin).list_namespaced_pod(namespace, label_selector="app=cqox-engine").items
    assert len(pods) == 2  # stored and Pending: no kubelet runs in the local stack
    assert apps.read_namespaced_deployment_status("cqox-engine", namespace).status.replicas == 2


def _virtual_service(version: str, weights: tuple[int, ...]) -> dict:
    subsets = ("stable", "canary")
    return {
        "apiVersion": f"networking.istio.io/{version}",
        "kind": "VirtualService",
        "metadata": {"name": f"cqox-engine-{version}"},
        "spec": {
            "hosts": ["cqox-engine"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "cqox-engine", "subset": subset}, "weight": weight}
                        for subset, weight in zip(subsets, weights, strict=True)
                    ]
                }
            ],
        },
    }


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_virtualservice_weights_are_validated_by_the_api_server(admin, namespace, version):
    custom = client.CustomObjectsApi(admin)

    def create(body: dict) -> dict:
        return custom.create_namespaced_custom_object(
            "networking.istio.io", version, namespace, "virtualservices", body
        )

    with pytest.raises(ApiException) as rejected:
        create(_virtual_service(version, (150, -50)))
    assert rejected.value.status == 422
    assert "spec.http[0].route[0].weight" in rejected.value.body
    assert "should be less than or equal to 100" in rejected.value.body

    accepted = create(_virtual_service(version, (90, 10)))
    assert [r["weight"] for r in accepted["spec"]["http"][0]["route"]] == [90, 10]
    stored = custom.get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", f"cqox-engine-{version}"
    )
    assert stored["spec"]["http"][0]["route"][1]["destination"]["subset"] == "canary"


def test_istio_crds_are_installed_idempotently(stack, admin):
    crds = client.ApiextensionsV1Api(admin)
    names = {c.metadata.name for c in crds.list_custom_resource_definition().items}
    assert {
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
        "peerauthentications.security.istio.io",
    } <= names
    before = crds.read_custom_resource_definition("virtualservices.networking.istio.io").metadata.resource_version
    stack.service("kube-apiserver").after_start()  # what every `stack up` does
    after = crds.read_custom_resource_definition("virtualservices.networking.istio.io").metadata.resource_version
    assert after == before


def test_peerauthentication_mode_is_an_enum(admin, namespace):
    custom = client.CustomObjectsApi(admin)
    body = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {"mtls": {"mode": "STRICTT"}},
    }
    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object("security.istio.io", "v1", namespace, "peerauthentications", body)
    assert rejected.value.status == 422
    body["spec"]["mtls"]["mode"] = "STRICT"
    custom.create_namespaced_custom_object("security.istio.io", "v1", namespace, "peerauthentications", body)


def test_restricted_identity_is_forbidden(stack, namespace):
    restricted = kube_config.new_client_from_config(config_file=stack.env()["CQOX_KUBE_RESTRICTED_KUBECONFIG"])
    try:
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(restricted).list_namespaced_pod(namespace)
        assert denied.value.status == 403
        status = json.loads(denied.value.body)
        assert status["reason"] == "Forbidden"
        assert 'User "cqox-restricted" cannot list resource "pods"' in status["message"]
        with pytest.raises(ApiException) as denied_vs:
            client.CustomObjectsApi(restricted).list_namespaced_custom_object(
                "networking.istio.io", "v1", namespace, "virtualservices"
            )
        assert denied_vs.value.status == 403
        # Authenticated, though: the discovery role every user has still answers.
        assert client.VersionApi(restricted).get_code().git_version == kube_build().kubernetes_version
    finally:
        restricted.close()


def test_kubeconfigs_are_private_and_env_holds_only_paths(stack):
    env = stack.env()
    for var in ("KUBECONFIG", "CQOX_KUBECONFIG", "CQOX_KUBE_RESTRICTED_KUBECONFIG"):
        path = env[var]
        assert path.startswith(str(stack.config.secrets_dir))
        assert (stack.config.secrets_dir / path.rsplit("/", 1)[1]).stat().st_mode & 0o777 == 0o600
    assert env["KUBECONFIG"] == env["CQOX_KUBECONFIG"]


def test_storage_accepts_only_the_api_servers_certificate(stack):
    """kine holds every object, Secrets included: a stack-CA user certificate must not reach it around RBAC."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    kine = stack.service("kine")
    assert kine.healthy()  # with the API server's etcd client certificate
    pki = kube_pki(stack.config.tls_dir)
    for identity in (pki.admin, pki.restricted):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.etcd_ca_cert.read_bytes(),
            private_key=identity.key.read_bytes(),
            certificate_chain=identity.cert.read_bytes(),
        )
        channel = grpc.secure_channel(f"127.0.0.1:{kine.port}", credentials)
        with channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(f"127.0.0.1:{kine.port}") as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
